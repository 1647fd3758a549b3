"""The shared bench harness: servers on 127.0.0.1 that are always stopped (``servers``, the
fake-upstream base ``upstream``, their environment ``env``, their logs ``logs``), /proc readings
(``procfs``), repeated and interleaved measurement on a shared machine (``timing``), load
clients (``clients``, ``sink``), cached wheels (``wheels``) and the results files
(``report``). Each bench in bench/ is a script on top of it."""
