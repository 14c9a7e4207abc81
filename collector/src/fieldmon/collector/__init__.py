"""The central collector: MQTT -> validate -> InfluxDB writer + alert engine -> notifiers."""
