"""The shared bench harness: processes and servers on 127.0.0.1 that are always stopped
(``servers``, ``upstream``), /proc readings (``procfs``), load clients (``clients``, ``sink``),
and the results files (``report``). Each bench in bench/ is a script on top of it."""
