"""The agent that runs on the site's Pi: probes -> samples -> outbox -> MQTT."""
