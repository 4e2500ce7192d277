"""Adapter classes for families whose inputs need code beyond a declarative spec."""
