"""Simulated integrators driving units through their stages, and the demo campaign."""
