"""The runtime every reelmill process shares: settings, logging, telemetry, errors, storage,
server bootstrap and channels. Services depend on it; it depends on none of them."""
