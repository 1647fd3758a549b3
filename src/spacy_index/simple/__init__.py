"""The PEP 503 / PEP 691 simple repository API, as data: pure functions over page bodies (no
I/O, no HTTP client), shared by ``install`` (reading an index) and the server's sources."""
