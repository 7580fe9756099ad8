"""Browser tests: Playwright driving Chromium against the example project, served by a
real daphne on each broker."""
