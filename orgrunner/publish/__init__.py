"""`orgrunner report`: the organization's compliance as one document, and publishing it."""
