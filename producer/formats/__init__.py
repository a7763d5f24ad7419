"""Readers and writers for the study formats the producer understands."""
