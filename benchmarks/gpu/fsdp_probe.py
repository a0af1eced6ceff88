"""Why FSDP2-sharded 4-bit weights decode differently: run under torchrun with 2 GPUs.

    torchrun --nproc_per_node 2 benchmarks/gpu/fsdp_probe.py {cast|nocast}

Prints, on rank 0: whether each unsharded packed 4-bit weight equals its bytes before sharding, whether its
quant_state survived, and the relative logit difference of the sharded model.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from qlora_kit.config import ModelConfig
from qlora_kit.model import ModelLoader, prepare_for_training
from qlora_kit.model.adapters import AdapterBuilder
from qlora_kit.model.quant import Bnb4bit
from qlora_kit.testing import make_tiny_llama


def main() -> None:
    mode = sys.argv[1]
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    path = os.path.join(tempfile.gettempdir(), "fsdp-probe-model")
    if rank == 0:
        torch.manual_seed(0)
        make_tiny_llama(path)
    dist.barrier()
    cfg = Bnb4bit.Config(compute_dtype="bfloat16", quant_storage="bfloat16")
    model = ModelLoader(ModelConfig(name_or_path=path), cfg, f"cuda:{rank}").load_model()
    model = prepare_for_training(model, grad_checkpointing=False)
    torch.manual_seed(0)
    model = AdapterBuilder(AdapterBuilder.Config(r=8, alpha=16, dropout=0.0)).apply(model)
    packed = {n: p.data.clone() for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"}
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(1)).cuda()
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits.float()
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mode == "cast"
        else MixedPrecisionPolicy()
    )
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.unshard()
    same = bad = lost = 0
    for n, p in model.named_parameters():
        if n in packed:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p.data
            ok = full.shape == packed[n].shape and torch.equal(
                full.view(torch.uint8), packed[n].view(torch.uint8)
            )
            same, bad = same + ok, bad + (not ok)
            lost += getattr(p, "quant_state", None) is None
            if not ok and rank == 0 and bad <= 2:
                print(
                    f"  {n}: {type(p).__name__} {tuple(full.shape)} {full.dtype} vs {tuple(packed[n].shape)}"
                )
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits.float()
    diff = ((after - before).abs().max() / before.abs().max()).item()
    if rank == 0:
        print(
            f"[{mode}] packed weights equal {same}, differ {bad}, params without quant_state {lost}, "
            f"logit difference {diff:.4g}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
