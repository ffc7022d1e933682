"""The bus: MDP/0.2 broker, its wire format, events and CURVE security."""
