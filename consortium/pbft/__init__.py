"""PBFT (Castro & Liskov) as a sans-IO state machine."""
