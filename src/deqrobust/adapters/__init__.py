"""Adapters that make models of other DEQ libraries meet the DEQ protocol (deqrobust.protocol)."""
