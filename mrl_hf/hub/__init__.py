"""Publishing mrl_hf checkpoints: model cards, ``push_to_hub``, remote code."""
from .card import render_model_card, usage_snippets
from .push import HubPushError, push_to_hub, save_for_hub
from .remote_code import write_remote_code

__all__ = ["HubPushError", "push_to_hub", "render_model_card", "save_for_hub",
           "usage_snippets", "write_remote_code"]
