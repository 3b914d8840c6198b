"""The Trio process around a consensus core: transport, storage, client API."""
