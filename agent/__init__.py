"""chargegate agent: a charge-point firmware core that runs unchanged on CPython and MicroPython."""
