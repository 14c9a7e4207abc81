"""The MQTT link of both daemons: broker settings (data) and the paho wrapper."""
