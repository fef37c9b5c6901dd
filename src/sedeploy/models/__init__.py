"""Models by name: `create_model("se_cnn")`, `list_models()`."""
from .registry import count_parameters, create_model, describe_model, list_models, model_config, register_model

__all__ = ["create_model", "list_models", "describe_model", "model_config", "count_parameters", "register_model"]
