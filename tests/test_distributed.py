"""Scale-out that is exercised, not only configured: the DDP config under two CPU processes (gloo), and the FSDP
config's sharding plan (one decoder layer per unit) under two CPU processes, equal to one process's training."""

import json
import os
import subprocess
import sys

import torch
import yaml

from modeling_recbase import RecBaseConfig, RecBaseForCausalLM
from tests.conftest import REPO_ROOT, tiny_pretraining_flags

CONFIGS = REPO_ROOT / "training" / "accelerate_configs"
TINY = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, codebook_sizes=[4, 4, 4], disambiguation_size=2)


def test_the_ddp_config_trains_under_two_cpu_processes(tiny_run, tmp_path):
    output_dir = tmp_path / "ddp"
    # The config is written for GPUs (bf16, one process per GPU); on CPU accelerate runs it with gloo.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "ddp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "29533",
        "-m",
        "training.pretrain",
        *tiny_pretraining_flags(tiny_run, output_dir, "music", "films"),
        "--max_steps",
        "4",
        "--checkpointing_steps",
        "4",
        "--per_device_batch_size",
        "8",
    ]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = json.loads((output_dir / "logs" / "train_log.jsonl").read_text().splitlines()[0])["config"]
    assert (logged["distributed_type"], logged["num_processes"], logged["backend"]) == ("MULTI_CPU", 2, "gloo")
    checkpoint = tmp_path / "ddp-checkpoints" / "step_4"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    assert (output_dir / "model.safetensors").exists()


SHARDED_TRAINING = """
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard
from modeling_recbase import RecBaseConfig, RecBaseForCausalLM

layer_class, output = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = RecBaseForCausalLM(RecBaseConfig.from_preset("recbase-tiny", **{tiny}))
for module in model.modules():  # the config's plan: one FSDP unit per decoder layer, then the whole model
    if type(module).__name__ == layer_class:
        fully_shard(module)
fully_shard(model)
sharded = next(model.parameters())
assert sharded.to_local().shape[0] < sharded.shape[0], "parameters are not sharded"
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
for step in range(2):
    ids = torch.randint(3, model.config.vocab_size, (2, 2, 9), generator=torch.Generator().manual_seed(step))[rank]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
state = {{name: tensor.full_tensor() for name, tensor in model.state_dict().items()}}
if rank == 0:
    save_file({{name: tensor.contiguous() for name, tensor in state.items()}}, output)
dist.destroy_process_group()
"""


def test_the_fsdp_plan_trains_under_two_cpu_processes_like_one_process(tmp_path):
    """accelerate maps several CPU processes to plain data parallelism and ignores an FSDP section, so the FSDP
    config's plan is applied here with torch's own ``fully_shard`` (FSDP2, what the config names), on gloo."""
    plan = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    assert plan["fsdp_version"] == 2
    script, output = tmp_path / "sharded.py", tmp_path / "sharded.safetensors"
    script.write_text(SHARDED_TRAINING.format(tiny=TINY))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29544",
            str(script),
            plan["fsdp_transformer_layer_cls_to_wrap"],
            str(output),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    from safetensors.torch import load_file

    torch.manual_seed(0)
    reference = RecBaseForCausalLM(RecBaseConfig.from_preset("recbase-tiny", **TINY))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)  # linear in the gradients (Adam magnifies float noise)
    for step in range(2):  # one process, both ranks' batches at once: the same mean loss
        ids = torch.randint(3, reference.config.vocab_size, (2, 2, 9), generator=torch.Generator().manual_seed(step))
        reference(input_ids=ids.reshape(4, 9), labels=ids.reshape(4, 9)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    sharded = load_file(output)
    for name, tensor in reference.state_dict().items():
        if name in sharded:
            torch.testing.assert_close(sharded[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert set(sharded) >= {name for name, _ in reference.named_parameters()} - {"lm_head.weight"}


def test_the_memory_plan_counts_the_real_model_and_shards_its_state():
    from benchmarks.memory_plan import BYTES_PER_PARAMETER, GIB, memory_plan

    config = RecBaseConfig.from_preset("recbase-tiny", **TINY)
    plan = memory_plan(config, world_sizes=(1, 4))
    assert plan["parameters"] == sum(p.numel() for p in RecBaseForCausalLM(config).parameters())
    one, four = plan["world_sizes"][1], plan["world_sizes"][4]
    for state, size in BYTES_PER_PARAMETER.items():
        assert one[state] == plan["parameters"] * size / GIB == 4 * four[state]
