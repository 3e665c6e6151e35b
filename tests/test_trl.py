"""The TRL adapter (normbt_plugin.trl_adapter) through TRL's real RewardTrainer on the tiny model: BT
equal to TRL's own loss and gradient, the hidden rows the OpenRLHF adapter's rule reads, NormBT from
the same core, its state through a TRL checkpoint and resume, the metrics in TRL's logs, the saved
model scoring as trained, and the command."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from conftest import RECIPE_ENV as ENV
from conftest import REPO, launcher

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402

from normbt_plugin.losses import NormBTLoss, build_loss  # noqa: E402
from normbt_plugin.trl_adapter import LOSS_STATE_FILE, PluginRewardTrainer  # noqa: E402
from normbt_plugin.trl_adapter.trainer import last_token_index  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from normbt_plugin.common.tiny import build_tiny_setup

    paths = build_tiny_setup(tmp_path_factory.mktemp("trl"), n_train=64, n_test=16)
    rows = [json.loads(line) for line in open(paths["train"])]
    pairs = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]
    return paths, Dataset.from_list(pairs)


def model_of(paths, seed: int = 0):
    torch.manual_seed(seed)  # the score head is initialised here
    model = AutoModelForSequenceClassification.from_pretrained(paths["model"], num_labels=1)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(paths["model"]).pad_token_id
    return model


def config(out, **kwargs) -> RewardConfig:
    base = {
        "output_dir": str(out), "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
        "max_steps": 6, "learning_rate": 2e-3, "logging_steps": 1, "save_strategy": "no", "report_to": [],
        "use_cpu": True, "bf16": False, "seed": 1, "data_seed": 1,
    }  # fmt: skip
    return RewardConfig(**{**base, **kwargs})


def trainer(cls, setup, out, loss=None, **kwargs):
    paths, dataset = setup
    extra = {} if loss is None else {"loss": loss}
    tok = AutoTokenizer.from_pretrained(paths["model"])
    return cls(
        model=model_of(paths),
        args=config(out, **kwargs),
        train_dataset=dataset,
        processing_class=tok,
        **extra,
    )


def first_batch(t):
    return next(iter(t.get_train_dataloader()))


def test_bt_equals_trls_own_loss_and_gradient(setup, tmp_path):
    ours = trainer(PluginRewardTrainer, setup, tmp_path / "ours", loss="bt")
    theirs = trainer(RewardTrainer, setup, tmp_path / "theirs")
    batch = first_batch(theirs)
    values = []
    for t in (ours, theirs):
        t.model.train()
        loss = t.compute_loss(t.model, copy.deepcopy(batch))
        loss.backward()
        values.append((loss.detach(), [p.grad.clone() for p in t.model.parameters() if p.grad is not None]))
    torch.testing.assert_close(values[0][0], values[1][0], rtol=0, atol=0)
    assert len(values[0][1]) == len(values[1][1]) > 10
    for a, b in zip(values[0][1], values[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_normbt_reads_the_rows_the_reward_is_read_at_and_the_cores_loss(setup, tmp_path):
    """The hidden rows the adapter hands the loss are the last layer's at transformers' reward index,
    equal to what the OpenRLHF adapter's rule (``eos_hidden_states``, the last attended token) reads
    on the same right-padded batch; the loss is the core's NormBT on those rows and rewards."""
    from normbt_plugin.hidden import eos_hidden_states

    class Recording(NormBTLoss):
        def __call__(self, *args):
            self.seen = [a.detach().clone() if a is not None else None for a in args]
            return super().__call__(*args)

    t = trainer(PluginRewardTrainer, setup, tmp_path / "nb", loss=Recording())
    batch = first_batch(t)
    t.model.eval()
    with torch.no_grad():
        t.compute_loss(t.model, copy.deepcopy(batch))
        out = t.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    chosen, rejected, h_c, h_r, _ = t.plugin_loss.seen
    last = out.hidden_states[-1]
    index = last_token_index(batch["input_ids"], t.model.config.pad_token_id)
    rows = last[torch.arange(len(last)), index]
    torch.testing.assert_close(torch.cat([h_c, h_r]), rows)
    torch.testing.assert_close(torch.cat([h_c, h_r]), eos_hidden_states(last, batch["attention_mask"], False))
    torch.testing.assert_close(torch.cat([chosen, rejected]), out.logits.squeeze(-1))
    # the core's NormBT on them: the adapter's loss value, from a fresh loss
    value, _ = build_loss("normbt")(chosen, rejected, h_c, h_r)
    fresh = trainer(PluginRewardTrainer, setup, tmp_path / "nb2", loss="normbt")
    fresh.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.compute_loss(fresh.model, copy.deepcopy(batch)), value)


def test_normbt_trains_logs_and_resumes_with_its_state(setup, tmp_path):
    """Through TRL's loop: mu moves once per optimizer step, NormBT's metrics reach TRL's log history,
    a checkpoint holds the loss state, and a run resumed from it ends where the uninterrupted one did."""
    full = trainer(
        PluginRewardTrainer, setup, tmp_path / "full", loss="normbt", save_strategy="steps", save_steps=3
    )
    full.train()
    assert full.plugin_loss.steps == 6  # 6 optimizer steps of 2 micro-batches
    logged = [h for h in full.state.log_history if "loss" in h]
    assert len(logged) == 6 and all(h["normbt_mu"] > 0 and h["normbt_weight_max"] >= h["normbt_weight_min"]
                                    for h in logged)  # fmt: skip
    assert logged[-1]["normbt_mu"] == pytest.approx(full.plugin_loss.mu)
    saved = json.loads((tmp_path / "full" / "checkpoint-3" / LOSS_STATE_FILE).read_text())
    assert saved["state"]["steps"] == 3 and saved["state"]["mu"] == pytest.approx(logged[2]["normbt_mu"])

    resumed = trainer(PluginRewardTrainer, setup, tmp_path / "full", loss="normbt", save_strategy="no")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed.plugin_loss.steps == 6
    assert resumed.plugin_loss.mu == pytest.approx(full.plugin_loss.mu, rel=1e-5)
    other = trainer(PluginRewardTrainer, setup, tmp_path / "full", loss="normbt_floor", save_strategy="no")
    with pytest.raises(ValueError, match="trained with NormBTLoss"):
        other.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))


def test_the_saved_model_loads_in_transformers_and_scores_as_trained(setup, tmp_path):
    t = trainer(PluginRewardTrainer, setup, tmp_path / "run", loss="normbt", max_steps=4)
    t.train()
    t.save_model(str(tmp_path / "saved"))
    batch = first_batch(t)
    t.model.eval()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        torch.testing.assert_close(loaded(**kwargs).logits, t.model(**kwargs).logits)


def test_trls_own_centering_is_refused_for_the_plugins(setup, tmp_path):
    with pytest.raises(ValueError, match="loss='center'"):
        trainer(PluginRewardTrainer, setup, tmp_path / "c", loss="bt", center_rewards_coefficient=0.01)


def logged_steps(out) -> list[dict]:
    """The per-step logs TRL kept in the run's last checkpoint."""
    (checkpoint,) = out.glob("checkpoint-*")
    return [
        h for h in json.loads((checkpoint / "trainer_state.json").read_text())["log_history"] if "loss" in h
    ]


def test_the_command_is_trls_reward_script_with_the_losses(setup, tmp_path):
    """The command: TRL's arguments and the losses', a bad loss named; on one process, and on two CPU
    processes (torchrun), where NormBT's mu and its metrics are reduced over the processes: the same
    pairs give the same loss and mu at every step whether one process reads 8 pairs or two read 4 each."""
    paths, dataset = setup
    data = tmp_path / "data"
    dataset.to_json(data / "train.jsonl")
    cmd = ["-m", "normbt_plugin.trl_adapter.reward"]
    command = {"cwd": REPO, "env": ENV, "capture_output": True, "text": True, "timeout": 300}
    shown = subprocess.run([sys.executable, *cmd, "--help"], **command)
    assert shown.returncode == 0 and "--loss_type" in shown.stdout and "--normbt_floor.floor" in shown.stdout
    assert "--per_device_train_batch_size" in shown.stdout  # TRL's own arguments
    common = ["--model_name_or_path", str(paths["model"]), "--dataset_name", str(data), "--report_to", "none",
              "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "3", "--logging_steps", "1",
              "--learning_rate", "2e-3", "--seed", "1", "--data_seed", "1"]  # fmt: skip
    bad = subprocess.run(
        [sys.executable, *cmd, *common, "--output_dir", str(tmp_path / "bad"), "--loss_type", "nonesuch"],
        **command,
    )
    assert bad.returncode == 2 and "unknown reward-model loss 'nonesuch'" in bad.stderr
    loss = ["--loss_type", "normbt", "--normbt.base", "label_smoothing", "--label_smoothing.epsilon", "0.2"]
    for name, nproc in (("one", 1), ("two", 2)):
        size = ["--per_device_train_batch_size", str(8 // nproc), "--output_dir", str(tmp_path / name)]
        run = subprocess.run([*launcher(nproc), *cmd, *common, *loss, *size], **command)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "normbt reward model saved" in run.stdout + run.stderr
        assert (tmp_path / name / "model.safetensors").exists()
    one, two = logged_steps(tmp_path / "one"), logged_steps(tmp_path / "two")
    assert [h["epoch"] for h in two] == [h["epoch"] for h in one] == [0.125, 0.25, 0.375]  # 8 pairs a step
    for key in ("loss", "normbt_mu", "normbt_dist_mean", "normbt_weight_max", "normbt_weight_min"):
        assert [h[key] for h in two] == pytest.approx([h[key] for h in one], rel=1e-4), key


def test_the_smollm2_evidence_recipe_through_trl_prints_commands_trls_parser_takes(tmp_path):
    """FRAMEWORK=trl: each RM stage is the TRL command with the OpenRLHF runs' settings (2 epochs, lr 5e-5,
    16 pairs a step as 4 x 4, 192 tokens, Adam beta2 0.95, cosine to 0.1 lr after 3% warm-up, the seed),
    parsed by the command's own parser (TRL's dataclasses refuse an argument they do not know)."""
    import shlex

    from normbt_plugin.trl_adapter.reward import parse

    env = {**ENV, "DRY_RUN": "1", "FRAMEWORK": "trl", "OUT": str(tmp_path), "MAIN_SEEDS": "1", "OTHERS": ""}
    proc = subprocess.run(["bash", "recipes/smollm2-evidence-study.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line)[3:] for line in proc.stdout.splitlines() if "trl_adapter.reward" in line]
    assert len(commands) == 2 and not any("train_rm" in line for line in proc.stdout.splitlines())
    for argv in commands:
        _, (_, args, _, _, extra) = parse(argv)
        assert (args.num_train_epochs, args.learning_rate, args.max_length, args.seed) == (2, 5e-5, 192, 1)
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 4)
        assert (args.adam_beta2, args.warmup_steps, args.lr_scheduler_type.value) == (
            0.95, 0.03, "cosine_with_min_lr"
        )  # fmt: skip
        if extra.loss_type == "normbt":
            assert getattr(extra, "normbt.ema_every") == "call"  # as the OpenRLHF runs' NormBT
    assert {parse(a)[1][4].loss_type for a in commands} == {"bt", "normbt"}
