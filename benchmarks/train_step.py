"""Where a CPU training step's time goes: the network's forward, backward and Adam step in float32
and under bf16 autocast, the masks and each fill, and the whole ``train_step`` as ``volden
train`` runs it on this machine (bf16 where the CPU has it natively)."""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from volden.masking import FILL_MODES, apply_mask, random_phase_masks
from volden.training import TrainConfig, build_network, native_cpu_bf16, train_step

from report import markdown_table, write_section


def milliseconds(step, repeats: int) -> float:
    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    device = torch.device("cpu")
    config = TrainConfig().resolve((64, 256, 256), device)
    network = build_network(config, None, device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(config.batch, 1, *config.patch)
    channels_last = x.contiguous(memory_format=torch.channels_last_3d)

    def network_step(precision) -> None:
        with precision():
            out = network(channels_last)
        loss = ((out.float() - x) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    precisions = {"float32": contextlib.nullcontext, "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    rows = [f"| network step, {name} | {milliseconds(lambda: network_step(p), args.repeats):.1f} |"
            for name, p in precisions.items()]

    def masks() -> torch.Tensor:
        return random_phase_masks(config.batch, config.patch, config.grid, generator, phases=config.masked_phases)

    mask = masks()
    rows.append(f"| masks ({config.masked_phases} phases of {config.grid}) | {milliseconds(masks, args.repeats):.1f} |")
    for fill in FILL_MODES:
        rows.append(f"| {fill} fill | {milliseconds(lambda: apply_mask(x, mask, fill, generator), args.repeats):.1f} |")
    for fill in FILL_MODES:
        filled = TrainConfig(fill=fill).resolve((64, 256, 256), device)
        rows.append(f"| `train_step`, {fill} fill | "
                    f"{milliseconds(lambda: train_step(network, optimizer, x, filled, generator, device), args.repeats):.1f} |")
    write_section(
        "Training step on the CPU: bf16 and the fills",
        f"One batch of the CPU defaults ({config.batch} patches of {'x'.join(map(str, config.patch))}, depth "
        f"{config.depth}, width {config.width}, channels-last), {torch.get_num_threads()} threads; this CPU "
        f"{'has' if native_cpu_bf16() else 'lacks'} native bf16, so `train_step` runs "
        f"{'under bf16 autocast' if native_cpu_bf16() else 'in float32'}.\n\n"
        + markdown_table(["what", "ms"], rows),
    )


if __name__ == "__main__":
    main()
