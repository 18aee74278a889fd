"""Shared by every costwarden service: the contracts between them (events, subjects, cost queries, key
format, policy, pricing) and the plumbing (bus, consumers, settings, probes, backoff); no service code."""
