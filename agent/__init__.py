"""The sensorwire agent: reads sensors and publishes frames on ZeroMQ."""
