"""One training step (forward, backward, optimiser update) captured as a CUDA graph.

A small MLP VAE step is a few dozen tiny kernels; launched eagerly, the CPU cannot issue them
as fast as an H100 runs them. Replaying a captured graph issues them all at once. This follows
PyTorch's whole-network capture recipe (torch.cuda.graphs): static input, warm-up on a side
stream, capture, then copy each batch into the static input and replay.
"""

from collections.abc import Callable, Iterable, Sequence

import torch


def _loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return losses["loss"]


class CudaGraphStep:
    """Replays `compute_losses(x)` + backward of `objective(losses)` (the loss; a stack's sum of its
    live members' losses) + `after_backward()` (a stack's mask of dead members' gradients) +
    `before_optimizer_step()` (gradient clipping, a stack's per member) + `optimizer.step()`.

    The optimiser must be capturable (torch's Adam with `capturable=True`, or StackedAdam, whose
    per-member rates are a device tensor it updates in place). Parameters and optimiser state are
    restored after the warm-up, so the first replay starts exactly where eager training would.
    Only batches of the captured shape can be replayed; the caller runs others eagerly.
    """

    WARMUP_STEPS = 3

    def __init__(self, compute_losses: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                 parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, example: torch.Tensor,
                 accumulators: Iterable[torch.Tensor] = (), before_optimizer_step: Callable[[], None] = lambda: None,
                 objective: Callable[[dict[str, torch.Tensor]], torch.Tensor] = _loss,
                 after_backward: Callable[[], None] = lambda: None, generators: Sequence[torch.Generator] = ()):
        """`accumulators`: tensors that `compute_losses` adds to in place; the warm-up's additions are undone.
        `generators`: the generators other than the default one that the step draws from (a stack's
        members' noise), registered with the graph so that each replay draws anew.

        Values that change between steps (a scheduled β, a scheduled learning rate) must be device
        tensors updated in place before each replay: Python numbers are recorded as constants.
        """
        self.shape = tuple(example.shape)
        self.static_x = example.detach().clone()
        accumulators = list(accumulators)
        saved_params = [p.detach().clone() for p in parameters]
        saved_accumulators = [a.clone() for a in accumulators]
        saved_state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in optimizer.state.items()}

        def step() -> dict[str, torch.Tensor]:
            losses = compute_losses(self.static_x)
            objective(losses).backward()
            after_backward()
            before_optimizer_step()
            optimizer.step()
            return {k: v.detach() for k, v in losses.items()}

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream().wait_stream(side)

        optimizer.zero_grad(set_to_none=True)  # backward inside the capture allocates static grads
        self.graph = torch.cuda.CUDAGraph()
        for generator in generators:
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.static_losses = step()

        # Capturing records kernels without running them; only the warm-up changed the weights.
        with torch.no_grad():
            for p, saved in zip(parameters, saved_params):
                p.copy_(saved)
            for a, saved in zip(accumulators, saved_accumulators):
                a.copy_(saved)
            for p, state in optimizer.state.items():
                for key, value in state.items():
                    if not torch.is_tensor(value):
                        continue
                    if p in saved_state:  # resumed: the state loaded from the checkpoint
                        value.copy_(saved_state[p][key])
                    else:  # fresh: Adam's initial state is all zeros (step 0)
                        value.zero_()

    def applies_to(self, x: torch.Tensor) -> bool:
        return tuple(x.shape) == self.shape

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_losses
