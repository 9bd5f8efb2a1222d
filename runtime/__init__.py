"""The runtime every reelmill process shares: settings, logging, telemetry, errors, storage,
server bootstrap and channels, cleanup tasks that survive a cancel, and what more than one
service needs (the Gemini client, a result cache). Services depend on it; it depends on none
of them."""
