"""Configs as code: Triton's schema, validation, and the committed files."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonlab import settings
from tritonlab.assets import repository
from tritonlab.serving import configs


def test_committed_configs_are_what_the_code_builds():
    for name, cfg in configs.course_configs().items():
        path = settings.MODEL_REPOSITORY / name / "config.pbtxt"
        expected = configs.render(cfg, configs.course_source(name), "make configs",
                                  configs.COURSE_NOTES[name])
        assert path.read_text() == expected, f"{path} is stale: run `make configs`"


def test_text_round_trip_as_triton_parses_it(tmp_path):
    cfg = configs.classifier_config(instances=2, num_threads=1,
                                    dynamic_batching={"preferred_batch_size": [4, 8],
                                                      "max_queue_delay_microseconds": 500})
    path = configs.write_config(cfg, tmp_path)
    text = path.read_text()
    assert text.startswith("# GENERATED FILE")
    parsed = text_format.Parse(text, mc.ModelConfig())  # comments are legal in text format
    assert parsed == cfg == configs.read_config(tmp_path / "food_classifier")
    assert "preferred_batch_size: 4" in text and "count: 2" in text


@pytest.mark.parametrize("change,problem", [
    (lambda c: setattr(c, "max_batch_size", 0), "dynamic batching needs max_batch_size"),
    (lambda c: c.dynamic_batching.preferred_batch_size.append(99), "outside 1..max_batch_size"),
    (lambda c: c.input.add(name="INPUT_IMAGE", data_type=mc.TYPE_STRING, dims=[1]),
     "declared twice"),
    (lambda c: c.output[0].ClearField("dims"), "has no dims"),
    (lambda c: setattr(c.instance_group[0], "count", 0), "count 0"),
])
def test_validation_names_the_problem(change, problem):
    cfg = configs.classifier_config(dynamic_batching={"preferred_batch_size": [4]})
    change(cfg)
    with pytest.raises(configs.ConfigError, match=problem):
        configs.validate(cfg)


def test_gpu_group_checked_against_devices():
    cfg = configs.classifier_config(kind="KIND_GPU", gpus=[1])
    configs.validate(cfg)  # device count unknown: not checked
    with pytest.raises(configs.ConfigError, match="no GPU"):
        configs.validate(cfg, gpu_count=0)
    with pytest.raises(configs.ConfigError, match=r"GPUs \[1\]"):
        configs.validate(cfg, gpu_count=1)
    configs.validate(cfg, gpu_count=2)


def test_folder_name_must_match(tmp_path):
    with pytest.raises(configs.ConfigError, match="differs from its folder"):
        configs.validate(configs.classifier_config(), folder=tmp_path / "other")


def test_diff_shows_one_field():
    before = configs.classifier_config()
    after = configs.classifier_config(max_batch_size=8)
    assert "-max_batch_size: 16" in configs.diff(before, after)
    assert "+max_batch_size: 8" in configs.diff(before, after)
    assert configs.diff(before, configs.classifier_config()) == ""


def test_committed_warmup_files_are_what_the_code_builds():
    """Every warm-up data file a committed config names exists, as `configs` writes it."""
    data = configs.warmup_data()
    for name, cfg in configs.course_configs().items():
        files = {i.input_data_file for w in cfg.model_warmup for i in w.inputs.values()}
        if cfg.platform == "ensemble":
            assert not files, "ensembles take no model_warmup"
            continue
        assert files == {t.name for t in cfg.input}, name
        for file in files:
            path = settings.MODEL_REPOSITORY / name / configs.WARMUP_DIR / file
            assert path.read_bytes() == data[file], f"{path} is stale: run `make configs`"
    image = data["INPUT_IMAGE"]
    assert int.from_bytes(image[:4], "little") == len(image) - 4 and image[4:7] == b"\xff\xd8\xff"


@pytest.mark.parametrize("change,problem", [
    (lambda c: c.model_warmup[0].inputs.pop("INPUT_IMAGE"), "lacks inputs"),
    (lambda c: setattr(c.model_warmup[0], "batch_size", 99), "batch_size 99"),
    (lambda c: setattr(c.model_warmup[0].inputs["INPUT_IMAGE"], "data_type", mc.TYPE_FP32),
     "as TYPE_FP32"),
])
def test_warmup_validation_names_the_problem(change, problem):
    cfg = configs.classifier_config()
    change(cfg)
    with pytest.raises(configs.ConfigError, match=problem):
        configs.validate(cfg)


def test_an_ensemble_with_warmup_is_refused_as_triton_would():
    cfg = configs.ensemble_config()
    configs.add_warmup(cfg, ["INPUT_IMAGE"])
    with pytest.raises(configs.ConfigError, match="ensembles take no model_warmup"):
        configs.validate(cfg)


def _threads(helpers, cfg, cores: int) -> int:
    """The threads `model.py` gives each instance of `cfg` on a machine with `cores` cores."""
    return helpers.cpu_threads({"model_config": configs.to_json(cfg)}, cores=cores)


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 48])
def test_served_thread_pools_follow_the_work(helpers, cores):
    """The ensemble's steps share the cores by their work: the captioner, far more work per
    image than the classifier, every core; the classifier at most half of them (at least one
    thread). The halves and every-core-each variants the course measures against it differ."""
    steps = configs.ensemble_steps(split=True)
    threads = {name: _threads(helpers, cfg, cores) for name, cfg in steps.items()}
    assert threads["conditional_captioning"] == cores
    assert threads["food_classifier"] == max(1, cores // 2)
    assert configs.course_configs()["food_classifier"] == steps["food_classifier"]
    halves = configs.ensemble_steps(shares={n: 0.5 for n in steps})
    assert all(_threads(helpers, cfg, cores) == max(1, cores // 2) for cfg in halves.values())
    unsplit = configs.ensemble_steps(split=False)  # the lesson's counter-example: every core each
    assert sum(_threads(helpers, cfg, cores) for cfg in unsplit.values()) == 2 * cores


def test_threads_per_instance_follow_the_config(helpers):
    two = configs.classifier_config(instances=2)
    assert _threads(helpers, two, 8) == 4                      # cpu_share 1, 2 instances
    assert _threads(helpers, configs.classifier_config(cpu_share=0.5), 8) == 4
    assert _threads(helpers, configs.classifier_config(num_threads=3), 8) == 3
    assert _threads(helpers, configs.classifier_config(instances=4), 2) == 1  # at least 1
    gpus = configs.classifier_config(instance_groups=[
        {"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}])             # 2 per GPU: 4 instances
    assert _threads(helpers, gpus, 16) == 4
    with pytest.raises(configs.ConfigError, match="cpu_share"):
        configs.classifier_config(cpu_share=1.5)


def test_shared_model_code_copies_are_what_make_configs_writes():
    """conditional_captioning carries generated copies of food_classifier's shared files: each
    starts with its banner and holds the source exactly."""
    copies = repository.shared_code()
    assert {p.name for p in copies} == {"image_decoding.py", "backend_helpers.py"}
    for path, text in copies.items():
        assert path.read_text() == text, f"{path} is stale: run `make configs`"
        assert text.startswith("# GENERATED FILE: a copy of model_repository/food_classifier/1/")


def test_model_files_teach_the_backend_contract():
    """Each model.py holds the Python backend's contract in about a hundred lines; the work is
    in the files beside it, and no model reaches into another model's folder."""
    for name in ("food_classifier", "conditional_captioning"):
        folder = repository.model_dir(name, repository=settings.MODEL_REPOSITORY)
        text = (folder / "model.py").read_text()
        assert len(text.splitlines()) <= 110, f"{name}/1/model.py has grown past ~100 lines"
        for method in ("def initialize(self, args)", "def execute(self, requests)",
                       "def finalize(self)"):
            assert method in text, f"{name}: {method}"
        for path in folder.glob("*.py"):  # imports by file path, or paths out of the folder
            code = path.read_text()
            assert "spec_from_file_location" not in code and '".."' not in code, path


@pytest.mark.parametrize("typo,says", [
    (("instance_group", "instance_groups"),
     'line 18 column 1: Message type "inference.ModelConfig" has no field named '
     '"instance_groups". Did you mean \'instance_group\'?'),
    (("KIND_CPU", "KIND_CPUU"), "Did you mean 'KIND_CPU' or 'KIND_GPU'"),
    (("max_batch_size: 16", "max_batch_size: sixteen"),
     "line 2 column 17: 'max_batch_size: sixteen': Couldn't parse integer: sixteen."),
    (("max_queue_delay_microseconds", "max_queue_delay_microsecond"),
     "Did you mean 'max_queue_delay_microseconds'?"),
])
def test_hand_written_config_text_is_parsed_as_triton_does_with_clear_errors(typo, says):
    text = configs.to_text(configs.classifier_config(
        dynamic_batching={"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 5000}))
    assert configs.parse(text) == text_format.Parse(text, mc.ModelConfig())
    with pytest.raises(configs.ConfigError) as err:
        configs.parse(text.replace(*typo))
    assert str(err.value).startswith("config.pbtxt, line ") and says in str(err.value)


def test_a_config_put_back_while_triton_is_stopped_is_written_and_loads_nothing(tmp_path, caplog):
    """The notebooks stop Triton first and then put the baseline back: with no server running,
    `deploy` writes the file (the next start reads it), reloads nothing and returns 0 s."""
    from tritonlab.serving import deploy
    from tritonlab.serving.embedded import EmbeddedTriton
    from tritonlab.settings import TritonAddress

    repo = repository.copy_repository(tmp_path / "model_repository")
    server = EmbeddedTriton(repo, address=TritonAddress.free(), state_dir=tmp_path / "state")
    two = configs.classifier_config(instances=2)
    configs.write_config(two, repo)
    assert not server.is_running()
    with caplog.at_level("INFO", logger="tritonlab"):
        assert deploy.restore_baseline(server) == 0.0
    assert configs.read_config(repo / "food_classifier" / "config.pbtxt") == \
        configs.course_configs()["food_classifier"]
    assert "Triton is not running: 'food_classifier' is served with this file" in caplog.text
    assert "ready after" not in caplog.text
