"""Small models that ship with the package."""
