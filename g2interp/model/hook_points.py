"""Hook points that cost nothing when nobody listens.

A TransformerLens ``HookPoint`` is an identity module: calling it runs ``nn.Module.__call__``'s hook
dispatch even when no hook is attached, about a microsecond each, and a decode step passes through
about 500 of them. :class:`HookPoint` here is the same class (same name, same ``add_hook``, found by
``HookedRootModule.setup`` as before) whose call returns its input directly when no hook, its own or
a global module hook, is registered: the value is the input either way, so listeners and
non-listeners see exactly what they saw before.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.modules import module as _module
from transformer_lens.hook_points import HookPoint as _TLHookPoint


def listened(hook: _TLHookPoint) -> bool:
    """Whether any hook is registered on ``hook`` (so that optional work is done only when asked for)."""
    return bool(
        hook._forward_hooks or hook._forward_pre_hooks or hook._backward_hooks or hook._backward_pre_hooks
    )


def _global_hooks() -> bool:
    return bool(
        _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
    )


class HookPoint(_TLHookPoint):
    """TransformerLens's identity hook point, skipping ``nn.Module`` dispatch when nothing listens."""

    def __call__(self, x: Tensor) -> Tensor:
        if listened(self) or _global_hooks():
            return super().__call__(x)
        return x
