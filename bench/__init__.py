"""The serving benchmark: inferstack's runtime side by side with its peers on one machine.

``inferstack bench`` (or ``make bench``) runs it; see bench/README.md for the method.
"""
