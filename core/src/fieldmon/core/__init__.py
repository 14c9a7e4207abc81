"""fieldmon's shared core: the wire contract, the site-config schema, config loading, MQTT link."""
