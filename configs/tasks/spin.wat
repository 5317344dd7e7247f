;; spin() never returns: fuel or the wall-clock limit stops it.
(module
  (func (export "spin")
    (loop $forever (br $forever))))
