"""mind-export and the serving runtime: ONNX export with parity, dynamic axes, K'u, raw-id encoding,
artifact validation, and a torch-free runtime. Budget: ~35 s on 2 cores (three real ONNX exports)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.artifact import build_tiny_artifact, build_tiny_run

from export.artifact import MANIFEST_FILE, ArtifactError, sha256_file
from export.cli import main as export_main
from export.onnx_export import ExportError, export_artifact, load_run
from export.runtime import UserTowerRuntime

MAX_LEN = 12
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """One real export shared by the module: (artifact_dir, checkpoint, data)."""
    root = tmp_path_factory.mktemp("export")
    tiny_run = build_tiny_run(root / "run", num_items=40, max_history_length=MAX_LEN, seed=3)
    checkpoint = load_run(tiny_run.run_dir)
    histories = [s.tolist() for s in tiny_run.data.sequences]
    export_artifact(checkpoint, root / "artifact", real_histories=histories, tolerance=TOLERANCE)
    return root / "artifact", checkpoint, tiny_run.data


@pytest.fixture(scope="module")
def runtime(tiny) -> UserTowerRuntime:
    return UserTowerRuntime.load(tiny[0])


def torch_interests(checkpoint, history: np.ndarray, mask: np.ndarray, profile: np.ndarray):
    with torch.no_grad():
        out = checkpoint.mind.interests(torch.from_numpy(history), torch.from_numpy(mask),
                                        torch.from_numpy(profile))
    return out.interest_vectors.numpy(), out.valid_interest_mask.numpy(), out.coupling.numpy()


def copy_artifact(tiny, tmp_path: Path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(tiny[0], target)
    return target


def rewrite_manifest(artifact_dir: Path, **changes) -> None:
    path = artifact_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


# --- export and parity -----------------------------------------------------------------------------------


def test_runtime_matches_pytorch_on_real_histories_cut_to_every_length(tiny, runtime):
    _, checkpoint, data = tiny
    raw_ids = data.item_ids
    worst = 0.0
    for length in range(1, MAX_LEN + 1):
        histories = [[raw_ids[i] for i in seq[-length:]] for seq in data.sequences[:20]]
        profiles = [{"cohort": data.profile_vocabs["cohort"][row[0]]} for row in data.user_profile[:20]]
        history, mask = runtime.encode_histories(histories)
        profile = runtime.encode_profiles(profiles)
        assert mask.sum(1).tolist() == [min(length, len(s)) for s in data.sequences[:20]]
        np.testing.assert_array_equal(profile[:, 0], data.user_profile[:20, 0])
        output = runtime.infer(history, mask, profile)
        vectors, valid, _ = torch_interests(checkpoint, history, mask, profile)
        with torch.no_grad():
            mask_t = torch.from_numpy(mask)
            bias = checkpoint.mind.merge_bias(checkpoint.mind.interests(
                torch.from_numpy(history), mask_t, torch.from_numpy(profile)), mask_t).numpy()
        worst = max(worst, float(np.abs(output.interest_vectors - vectors).max()),
                    float(np.abs(output.interest_bias - bias).max()))
        np.testing.assert_array_equal(output.valid_interest_mask, valid)
    assert worst <= TOLERANCE
    temperature = checkpoint.mind.config.logit_temperature
    assert runtime.manifest.merge == {"rule": "mixture", "temperature": temperature}


def test_a_max_merge_model_exports_without_biases_and_a_mixture_needs_them(tmp_path):
    artifact = build_tiny_artifact(tmp_path / "max", num_items=20, max_history_length=6,
                                   config_changes={"interest_merge": "max"})
    runtime = UserTowerRuntime.load(artifact)
    assert runtime.manifest.merge == {"rule": "max"}
    assert runtime.manifest.onnx_outputs == ["interest_vectors", "valid_interest_mask"]
    output = runtime.infer(*runtime.encode_histories([runtime.item_ids()[:4]]),
                           runtime.encode_profiles([None]))
    assert output.interest_bias.shape == (1, 4) and not output.interest_bias.any()
    rewrite_manifest(artifact, merge={"rule": "mixture", "temperature": 0.1})
    with pytest.raises(ArtifactError, match="merge .* interest_bias output"):
        UserTowerRuntime.load(artifact)


def test_manifest_records_the_checkpoint_and_the_parity_it_passed(tiny, runtime):
    _, checkpoint, data = tiny
    manifest = runtime.manifest
    assert manifest.model_version == checkpoint.model_version
    assert (manifest.embedding_dim, manifest.num_interests, manifest.max_history_length) == (8, 4, MAX_LEN)
    assert manifest.num_items == data.num_items and manifest.profile_fields == ["cohort"]
    assert manifest.parity["passed"] and manifest.parity["tolerance"] == TOLERANCE
    assert manifest.parity["max_abs_diff"] <= TOLERANCE
    # every length 1..max unpadded, plus padded, real-history and unknown-profile batches
    assert manifest.parity["cases"] >= MAX_LEN + 3
    assert manifest.opset >= 17 and manifest.source["checkpoint"].endswith("checkpoint.pt")


def test_item_vectors_are_the_models_pooled_item_embeddings(tiny, runtime):
    _, checkpoint, data = tiny
    with torch.no_grad():
        expected = checkpoint.mind.all_item_embeddings().numpy()
    assert runtime.item_ids() == data.item_ids[1:]
    np.testing.assert_allclose(runtime.item_vectors(), expected[1:], atol=1e-6)
    # side features travel with the items, as raw values, for the items collection
    categories = runtime.item_side_features()["category"]
    assert len(categories) == data.num_items
    assert categories[0] == [data.item_feature_vocabs["category"][data.item_features["category"][1][0]]]


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("length", [1, 3, MAX_LEN])
def test_dynamic_batch_and_length_axes(tiny, runtime, batch, length):
    _, checkpoint, _ = tiny
    rng = np.random.default_rng(batch * 100 + length)
    history = rng.integers(1, runtime.manifest.num_items + 1, (batch, length)).astype(np.int64)
    kept = rng.integers(1, length + 1, batch)
    mask = np.arange(length)[None, :] < kept[:, None]
    history[~mask] = 0
    profile = rng.integers(0, 4, (batch, 1)).astype(np.int64)
    output = runtime.infer(history, mask, profile)
    vectors, valid, _ = torch_interests(checkpoint, history, mask, profile)
    assert output.interest_vectors.shape == (batch, 4, 8) and output.interest_vectors.dtype == np.float32
    assert output.valid_interest_mask.shape == (batch, 4) and output.valid_interest_mask.dtype == np.bool_
    assert np.abs(output.interest_vectors - vectors).max() <= TOLERANCE
    np.testing.assert_array_equal(output.valid_interest_mask, valid)


def test_valid_interest_mask_is_the_models_k_prime_for_every_length(tiny, runtime):
    _, checkpoint, _ = tiny
    ids = runtime.item_ids()
    histories = [ids[:n] for n in range(0, MAX_LEN + 4)]
    history, mask = runtime.encode_histories(histories)
    output = runtime.infer(history, mask, runtime.encode_profiles([None] * len(histories)))
    _, valid, _ = torch_interests(checkpoint, history, mask, np.zeros((len(histories), 1), np.int64))
    np.testing.assert_array_equal(output.valid_interest_mask, valid)
    counts = output.valid_interest_mask.sum(1).tolist()
    # K'u = max(1, min(4, floor(log2 n))) with n capped at max_history_length = 12
    expected = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]
    assert counts == expected


def test_appending_padding_does_not_change_a_users_interests(runtime):
    ids = runtime.item_ids()
    alone = runtime.infer(*runtime.encode_histories([ids[3:6]]), runtime.encode_profiles([{"cohort": "b"}]))
    history, mask = runtime.encode_histories([ids[3:6], ids[:MAX_LEN]])  # padded to 12 in this batch
    batched = runtime.infer(history, mask, runtime.encode_profiles([{"cohort": "b"}, None]))
    np.testing.assert_allclose(batched.interest_vectors[0], alone.interest_vectors[0], atol=1e-6)
    np.testing.assert_array_equal(batched.valid_interest_mask[0], alone.valid_interest_mask[0])


def test_session_threads_are_configurable_and_give_the_same_interests(tiny, runtime, monkeypatch):
    import onnxruntime as ort

    from export.runtime import THREADS_ENV, session_options

    options = session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    monkeypatch.setenv(THREADS_ENV, "2")
    assert session_options().intra_op_num_threads == 2
    two_threads = UserTowerRuntime.load(tiny[0])
    histories = [runtime.item_ids()[i : i + 1 + i % MAX_LEN] for i in range(30)]
    np.testing.assert_allclose(two_threads.infer_raw(histories).interest_vectors,
                               runtime.infer_raw(histories).interest_vectors, atol=1e-6)
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=f"{THREADS_ENV}='many'"):
        session_options()


# --- raw ids and profiles -------------------------------------------------------------------------------


def test_unknown_item_ids_are_dropped_and_the_most_recent_known_items_kept(runtime):
    ids = runtime.item_ids()
    long_history = [ids[i % len(ids)] for i in range(MAX_LEN + 5)]
    with_unknown = ["never-seen", ids[4], "<pad>", ids[7], "also-unknown"]
    history, mask = runtime.encode_histories([with_unknown, long_history, []])
    assert history.shape == (3, MAX_LEN) and history.dtype == np.int64 and mask.dtype == np.bool_
    assert history[0, :2].tolist() == [5, 8] and mask[0].tolist() == [True, True] + [False] * (MAX_LEN - 2)
    assert history[1].tolist() == [(i % len(ids)) + 1 for i in range(5, MAX_LEN + 5)]
    assert not mask[2].any() and not history[2].any()
    assert runtime.known_item_count(with_unknown) == 2


def test_a_history_of_only_unknown_items_gives_one_finite_interest(tiny, runtime):
    _, checkpoint, _ = tiny
    history, mask = runtime.encode_histories([["nope", "nada"]])
    assert history.shape == (1, 1) and not mask.any()
    profile = runtime.encode_profiles([None])
    output = runtime.infer(history, mask, profile)
    assert output.valid_interest_mask.tolist() == [[True, False, False, False]]
    assert np.isfinite(output.interest_vectors).all()
    vectors, _, _ = torch_interests(checkpoint, history, mask, profile)
    assert np.abs(output.interest_vectors - vectors).max() <= TOLERANCE


def test_unknown_missing_and_none_profile_values_map_to_index_zero(runtime):
    profile = runtime.encode_profiles([{"cohort": "c"}, {"cohort": "zzz"}, {"cohort": None}, {}, None,
                                       {"other": "a"}])
    assert profile.dtype == np.int64 and profile.shape == (6, 1)
    assert profile[:, 0].tolist() == [3, 0, 0, 0, 0, 0]


def test_infer_rejects_histories_longer_than_the_tower_was_built_for(runtime):
    with pytest.raises(ValueError, match="max_history_length"):
        runtime.infer(np.ones((1, MAX_LEN + 1), np.int64), np.ones((1, MAX_LEN + 1), bool),
                      np.zeros((1, 1), np.int64))


def test_infer_raw_chunks_a_large_batch_into_the_same_result(runtime):
    ids = runtime.item_ids()
    histories = [ids[i % 30 : i % 30 + 1 + i % MAX_LEN] for i in range(50)]
    whole = runtime.infer_raw(histories, batch_size=512)
    chunked = runtime.infer_raw(histories, batch_size=7)
    np.testing.assert_allclose(chunked.interest_vectors, whole.interest_vectors, atol=1e-6)
    np.testing.assert_array_equal(chunked.valid_interest_mask, whole.valid_interest_mask)
    empty = runtime.infer_raw([])
    assert empty.interest_vectors.shape == (0, 4, 8)


def test_integer_ids_match_their_decimal_strings_and_coupling_can_be_exported(tmp_path):
    artifact = build_tiny_artifact(tmp_path / "numeric", num_items=20, max_history_length=6, numeric_ids=True,
                                   with_coupling=True, adaptive_interests=False)
    runtime = UserTowerRuntime.load(artifact)
    as_ints = runtime.encode_histories([[3, 5, 7]])
    as_strings = runtime.encode_histories([["3", "5", "7"]])
    np.testing.assert_array_equal(as_ints[0], as_strings[0])
    assert as_ints[0].tolist() == [[3, 5, 7]]
    assert runtime.manifest.onnx_outputs == ["interest_vectors", "valid_interest_mask", "interest_bias",
                                             "coupling"]
    history, mask = as_ints
    coupling = runtime.session.run(["coupling"], {"history": history, "history_mask": mask,
                                                  "profile": runtime.encode_profiles([None])})[0]
    checkpoint = load_run(tmp_path / "numeric-run")
    _, valid, expected_coupling = torch_interests(checkpoint, history, mask, np.zeros((1, 1), np.int64))
    assert coupling.shape == (1, 3, 4)
    np.testing.assert_allclose(coupling, expected_coupling, atol=TOLERANCE)
    # adaptive_interests=False: every user gets all K interests, in torch and in ONNX alike
    assert valid.all() and runtime.infer(history, mask,
                                         runtime.encode_profiles([None])).valid_interest_mask.all()


@pytest.mark.parametrize(
    "changes",
    [
        {"routing_init": "position", "normalize": "none"},
        {
            "routing_init": "item",
            "normalize": "interests",
            "per_interest_bilinear": True,
            "routing_normalize": True,
        },
        {"routing_init": "learned", "normalize": "interests"},
        {"routing_init": "item", "normalize": "interests", "global_interest": True},
        {"routing_init": "prototype", "normalize": "interests"},
    ],
)
def test_every_routing_variant_exports_with_parity_and_item_keyed_routing_ignores_order(tmp_path, changes):
    artifact = build_tiny_artifact(tmp_path / "variant", num_items=20, max_history_length=8,
                                   config_changes=changes)  # export_artifact refuses to write without parity
    runtime = UserTowerRuntime.load(artifact)
    history, mask = runtime.encode_histories([["c0_1", "c1_2", "c2_3", "c3_4", "c0_2"],
                                              ["c0_2", "c3_4", "c2_3", "c1_2", "c0_1"]])
    out = runtime.infer(history, mask, runtime.encode_profiles([None, None]))
    slots = 4 + changes.get("global_interest", 0)
    assert out.interest_vectors.shape[1] == runtime.manifest.num_interests == slots
    norms = np.linalg.norm(out.interest_vectors[out.valid_interest_mask], axis=-1)
    if changes["normalize"] == "interests":
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    if changes["routing_init"] in ("item", "learned", "prototype"):  # another order: the same interests
        np.testing.assert_allclose(out.interest_vectors[0], out.interest_vectors[1], atol=1e-5)
    else:
        assert not np.allclose(out.interest_vectors[0], out.interest_vectors[1], atol=1e-5)


# --- refusing bad exports and bad artifacts --------------------------------------------------------------


@pytest.mark.parametrize("drift", [1e-3, float("nan")])
def test_export_refuses_to_write_an_artifact_that_fails_parity(tiny, tmp_path, monkeypatch, drift):
    _, checkpoint, _ = tiny
    honest = checkpoint.mind.interests

    def drifted(*args):  # what a lossy (or broken) exporter looks like from the parity check's side
        out = honest(*args)
        return out._replace(interest_vectors=out.interest_vectors + drift)

    monkeypatch.setattr(checkpoint.mind, "interests", drifted)
    with pytest.raises(ExportError, match=r"refusing to write .*parity FAILED.*tolerance 1e-04"):
        export_artifact(checkpoint, tmp_path / "out", tolerance=TOLERANCE)
    assert not (tmp_path / "out").exists()


def test_a_youtube_dnn_checkpoint_is_refused_with_one_line(tmp_path, capsys):
    from model.baselines import build_model
    from model.checkpoint import save_checkpoint
    from model.config import FeatureSpec, MindConfig, vocabularies_of
    from model.synthetic import synthetic_planted

    data, _ = synthetic_planted(num_users=10, num_clusters=2, items_per_cluster=5, max_interests=2)
    model = build_model("youtube_dnn", MindConfig(embedding_dim=8), FeatureSpec.from_data(data),
                        data.item_features)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run", model, vocabularies=vocabularies_of(data),
                    item_feature_matrix=data.item_features)
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "youtube_dnn" in err and "only MIND" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["user_tower.onnx", "item_vectors.npy", "vocab.json", "manifest.json"])
def test_a_missing_file_names_itself(tiny, tmp_path, name):
    artifact = copy_artifact(tiny, tmp_path)
    (artifact / name).unlink()
    with pytest.raises(ArtifactError, match=rf"{name}: missing"):
        UserTowerRuntime.load(artifact)


@pytest.mark.parametrize("name", ["user_tower.onnx", "item_vectors.npy", "vocab.json"])
def test_a_corrupted_file_fails_its_hash(tiny, tmp_path, name):
    artifact = copy_artifact(tiny, tmp_path)
    data = bytearray((artifact / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (artifact / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{name}: sha256 .* corrupted"):
        UserTowerRuntime.load(artifact)


def test_item_vectors_of_the_wrong_shape_are_refused_even_with_a_matching_hash(tiny, tmp_path):
    artifact = copy_artifact(tiny, tmp_path)
    np.save(artifact / "item_vectors.npy", np.zeros((5, 8), np.float32))
    manifest = json.loads((artifact / MANIFEST_FILE).read_text())
    rewrite_manifest(artifact,
                     files={**manifest["files"],
                            "item_vectors.npy": sha256_file(artifact / "item_vectors.npy")})
    with pytest.raises(ArtifactError,
                       match=r"item_vectors.npy: float32 \(5, 8\), manifest expects float32 \(41, 8\)"):
        UserTowerRuntime.load(artifact)


def test_a_manifest_of_another_model_version_is_refused(tiny, runtime):
    with pytest.raises(ArtifactError,
                       match=rf"model version {runtime.manifest.model_version} ≠ expected abc"):
        UserTowerRuntime.load(tiny[0], expected_model_version="abc")
    assert UserTowerRuntime.load(tiny[0], expected_model_version=runtime.manifest.model_version).manifest


def test_an_unsupported_format_version_or_broken_manifest_is_refused(tiny, tmp_path):
    artifact = copy_artifact(tiny, tmp_path)
    rewrite_manifest(artifact, format_version=99)
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        UserTowerRuntime.load(artifact)
    (artifact / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: not valid JSON"):
        UserTowerRuntime.load(artifact)
    (artifact / MANIFEST_FILE).write_text(json.dumps({"format_version": 1, "model_version": "x"}))
    with pytest.raises(ArtifactError, match="missing field"):
        UserTowerRuntime.load(artifact)


def test_an_onnx_graph_with_another_signature_is_refused(tiny, tmp_path):
    import onnx

    artifact = copy_artifact(tiny, tmp_path)
    model = onnx.load(str(artifact / "user_tower.onnx"))
    model.graph.input[1].name = "lengths"
    for node in model.graph.node:
        node.input[:] = ["lengths" if i == "history_mask" else i for i in node.input]
    onnx.save(model, str(artifact / "user_tower.onnx"))
    manifest = json.loads((artifact / MANIFEST_FILE).read_text())
    rewrite_manifest(artifact,
                     files={**manifest["files"],
                            "user_tower.onnx": sha256_file(artifact / "user_tower.onnx")})
    with pytest.raises(ArtifactError, match="user_tower.onnx: input history_mask is absent"):
        UserTowerRuntime.load(artifact)


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_exports_then_verifies_and_reports_a_corrupted_artifact_in_one_line(tmp_path, capsys):
    tiny_run = build_tiny_run(tmp_path / "run", num_items=24, max_history_length=8, seed=5)
    out = tmp_path / "artifact"
    assert export_main([str(tiny_run.run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model {tiny_run.model_version}" in printed and "parity ok" in printed
    assert export_main(["verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sha256 ok" in printed and "onnx run ok" in printed and "parity ok" in printed
    assert str(tiny_run.run_dir / "checkpoint.pt") in printed  # found through the manifest's source
    retrained = build_tiny_run(tmp_path / "run", num_items=24, max_history_length=8, seed=6)
    assert export_main(["verify", str(out)]) == 0  # the artifact is still sound; only parity cannot run
    assert f"parity: skipped (the recorded checkpoint {tiny_run.run_dir / 'checkpoint.pt'} is now model " \
           f"{retrained.model_version}" in capsys.readouterr().out
    assert export_main(["verify", str(out), "--run", str(tiny_run.run_dir)]) == 1
    assert f"≠ checkpoint {retrained.model_version}" in capsys.readouterr().err
    (out / "vocab.json").write_text("{}")
    assert export_main(["verify", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "vocab.json: sha256" in err and len(err.splitlines()) == 1


def test_cli_on_a_run_without_a_checkpoint_prints_one_line(tmp_path, capsys):
    assert export_main([str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "checkpoint.pt: no checkpoint here" in err and len(err.splitlines()) == 1
    assert export_main(["verify", str(tmp_path / "nowhere")]) == 1
    assert "not a directory" in capsys.readouterr().err


# --- the runtime stays torch-free ------------------------------------------------------------------------


def test_importing_and_using_the_runtime_does_not_import_torch(tiny):
    script = (
        "import sys\n"
        "from export.runtime import UserTowerRuntime\n"
        f"rt = UserTowerRuntime.load({str(tiny[0])!r})\n"
        "out = rt.infer_raw([rt.item_ids()[:5]], [{'cohort': 'a'}])\n"
        "from export.cli import smoke_check\n"
        "smoke_check(rt)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model', "
        "'onnx', 'onnxscript'))\n"
        "print('LEAKED', bad) if bad else print('CLEAN', out.interest_vectors.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "CLEAN (1, 4, 8)"
