"""Scheduling: feasibility filters, the placement score, the offer window, trust and commons credits."""

from .credits import (
    CreditError,
    CreditLedger,
    CreditRate,
    InsufficientCredits,
    Reservation,
    actual_cost,
    estimate_cost,
)
from .feasibility import PlacementContext
from .offer import Offer
from .placement import OfferResult, PlacementDecision, feasibility_check, place
from .trust import TrustBook
from .window import OfferWindow, collect

__all__ = [
    "CreditError", "CreditLedger", "CreditRate", "InsufficientCredits", "Offer", "OfferResult",
    "OfferWindow", "PlacementContext", "PlacementDecision", "Reservation", "TrustBook", "actual_cost",
    "collect", "estimate_cost", "feasibility_check", "place",
]
