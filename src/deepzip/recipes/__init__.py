"""Recipes shipped with deepzip (TOML files; load them with ``deepzip.config.builtin_recipe``)."""
