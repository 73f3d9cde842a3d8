"""Mixture ablation arm `general_only`: the base checkpoint, then one phase on its weights (common.ARMS)."""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("heal_ablation_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
  return common.arm_config("general_only", arg)
