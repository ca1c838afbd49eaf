"""Post-training methods: the registry (registry.py) and ours, one module or package per method.

    from methods import get_method, register_method
"""

from .registry import available_methods, build_config, get_method, register_method

__all__ = ["available_methods", "build_config", "get_method", "register_method"]
