"""The safety layers: fences, session policies, the call guard, confirmations, locks and saved plans."""
