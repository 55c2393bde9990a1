"""The model registry from a notebook: register a version (from a training job, or from
your own torch module, scripted for you), move aliases, read versions, history, lineage.

    client.models.register("digits", job=job)                     # a job that succeeded
    client.models.register("digits", module, example_input=x, dataset="digits@v1",
                           task="image_classification", labels=[...])
    client.models.alias("digits", "champion", 3, reason="best on v2 test")
    client.models.get("digits@champion")
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loophub import errors

if TYPE_CHECKING:
    from loophub.client.core import Client


def _split(ref: str) -> tuple[str, str]:
    name, _, selector = ref.partition("@")
    return quote(name, safe=""), quote(selector or "latest", safe="")


def default_preprocess(task: str, example: Any) -> dict:
    """How an image model's inputs are prepared when the caller does not say: the example's
    channels (1: grey, 3: RGB) and size, pixels scaled to [0, 1]. Text models need their
    tokenizer, so they must say."""
    if task not in ("image_classification", "object_detection"):
        raise errors.InvalidInput(
            f"register: a {task} model needs preprocess= (its tokenizer: see the "
            "text-classifier recipe's artifact for the shape)")
    shape = tuple(example.shape)
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise errors.InvalidInput(f"register: example_input of an image model is [batch, "
                                  f"1 or 3 channels, height, width], got {list(shape)}")
    channels = shape[1]
    return {"kind": "image", "mode": "L" if channels == 1 else "RGB",
            "size": [shape[2], shape[3]], "scale": 1 / 255, "mean": [0.0] * channels,
            "std": [1.0] * channels}


def to_torchscript(module: Any, example_input: Any) -> bytes:
    """MODULE as a TorchScript archive: scripted (control flow kept), else traced on
    EXAMPLE_INPUT; refused with both reasons if neither works."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    else:
        was_training = module.training
        module.eval()
        try:
            scripted = torch.jit.script(module)
        except Exception as script_error:
            if example_input is None:
                raise errors.InvalidInput(
                    f"register: the module cannot be scripted ({first_line(script_error)}); "
                    "give example_input= so it can be traced instead") from None
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    scripted = torch.jit.trace(module, example_input)
            except Exception as trace_error:
                raise errors.InvalidInput(
                    "register: the module can be neither scripted nor traced, so it cannot "
                    f"be served without your code. script: {first_line(script_error)}; "
                    f"trace: {first_line(trace_error)}") from None
        finally:
            module.train(was_training)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Models:
    def __init__(self, client: Client) -> None:
        self.client = client

    def _model(self, name: str, *parts: str) -> str:
        return "/".join(["models", quote(name, safe=""), *parts])

    # -- registering -----------------------------------------------------------------------

    def register(self, name: str, module: Any = None, *, job: Any = None,
                 example_input: Any = None, dataset: str | None = None,
                 task: str | None = None, labels: Sequence[str] | None = None,
                 preprocess: dict | None = None, params: dict | None = None,
                 metrics: dict | None = None, card: dict | None = None,
                 tags: dict | None = None, description: str | None = None,
                 visibility: str | None = None, group: str | None = None) -> dict:
        """A new version of NAME: from JOB (a training Job or its id, which succeeded), or
        from MODULE (a torch.nn.Module, scripted or traced on EXAMPLE_INPUT; TASK and LABELS
        say what it predicts, DATASET "name@version" what it learnt from). Returns the
        version's view; the model is created on its first version."""
        extra = {"card": card, "tags": tags, "description": description,
                 "visibility": visibility, "group": group}
        if (job is None) == (module is None):
            raise errors.InvalidInput("register: give either job= or a module, not both")
        if job is not None:
            body = {"job": getattr(job, "id", job)}
        else:
            body = self._module_body(module, example_input, dataset, task, labels,
                                     preprocess, params, metrics)
        body.update({k: v for k, v in extra.items() if v is not None})
        return self.client.request("POST", self._model(name, "versions"), json=body)

    def _module_body(self, module, example_input, dataset, task, labels, preprocess, params,
                     metrics) -> dict:
        if not task or not labels:
            raise errors.InvalidInput("register: a module needs task= (e.g. "
                                      "image_classification) and labels= (output order)")
        data = to_torchscript(module, example_input)
        meta = {"format": "torchscript", "task": task, "labels": list(labels),
                "preprocess": preprocess or default_preprocess(task, example_input)}
        from loophub.training.service import packages

        meta["packages"] = packages()  # what the notebook that scripted it ran
        if example_input is not None:
            import torch

            meta.update(input_shape=list(example_input.shape[1:]),
                        input_dtype=str(example_input.dtype), torch=torch.__version__)
        digest = self.client.datasets.upload(io.BytesIO(data))["digest"]
        body: dict[str, Any] = {"artifact": digest, "meta": meta}
        for key, value in (("dataset", dataset), ("params", params), ("metrics", metrics)):
            if value is not None:
                body[key] = value
        return body

    # -- reading -----------------------------------------------------------------------------

    def list(self, *, owner: str | None = None, task: str | None = None) -> list[dict]:
        params = {k: v for k, v in (("owner", owner), ("task", task)) if v}
        return self.client.request("GET", "models", params=params)["models"]

    def show(self, name: str) -> dict:
        """The model NAME: task, labels, aliases, latest version."""
        return self.client.request("GET", self._model(name))

    def get(self, ref: str) -> dict:
        """A version: NAME (latest), NAME@3, NAME@v3 or NAME@ALIAS."""
        name, selector = _split(ref)
        return self.client.request("GET", f"models/{name}/versions/{selector}")

    def versions(self, name: str) -> list[dict]:
        return self.client.request("GET", self._model(name, "versions"))["versions"]

    def history(self, name: str, *, subject: str | None = None) -> list[dict]:
        """Every change, oldest first (SUBJECT: "alias:champion", "v3")."""
        params = {"subject": subject} if subject else {}
        return self.client.request("GET", self._model(name, "history"), params=params)[
            "history"]

    def lineage(self, ref: str) -> dict:
        name, selector = _split(ref)
        return self.client.request("GET", f"models/{name}/versions/{selector}/lineage")

    def artifact(self, ref: str) -> bytes:
        """The version's TorchScript archive (load it with torch.jit.load)."""
        name, selector = _split(ref)
        return self.client.raw("GET", f"models/{name}/versions/{selector}/artifact",
                               timeout=None).content

    # -- evaluating ----------------------------------------------------------------------

    def evaluate(self, ref: str, *, dataset: str, split: str | None = "test",
                 slices: Sequence[str] = ("label",), per_worker: dict | None = None,
                 wait: bool = True, progress: bool = True, timeout: float | None = None,
                 checks: bool = False) -> dict:
        """Evaluate version REF on DATASET (NAME@VERSION)'s SPLIT (None: every record) as a
        fairly scheduled job; metrics overall and per slice ("label", "split",
        "metadata.<key>"). Waits for the result unless WAIT is false."""
        name, selector = _split(ref)
        body: dict[str, Any] = {"dataset": dataset, "split": split, "slices": list(slices)}
        if per_worker:
            body["per_worker"] = dict(per_worker)
        if checks:
            body["checks"] = True
        view = self.client.request("POST", f"models/{name}/versions/{selector}/evaluations",
                                   json=body)
        if not wait:
            return view
        job = self.client.training.get(view["job"])
        try:
            job.wait(progress=progress, timeout=timeout)
        except errors.LoophubError as exc:
            raise type(exc)(f"evaluation {view['id']} of {view['ref']} on {view['dataset']}: "
                            f"{exc}") from None
        return self.evaluation(view["model"], view["id"])

    def evaluation(self, name: str, evaluation_id: str) -> dict:
        return self.client.request("GET", self._model(name, "evaluations",
                                                      quote(evaluation_id, safe="")))

    def evaluations(self, ref: str) -> list[dict]:
        """The evaluations of version REF (NAME@3), or of every version (NAME)."""
        name, _, selector = ref.partition("@")
        if not selector:
            return self.client.request("GET", self._model(name, "evaluations"))["evaluations"]
        name, selector = _split(ref)
        return self.client.request("GET", f"models/{name}/versions/{selector}/evaluations")[
            "evaluations"]

    def put_evaluation(self, ref: str, evaluation_id: str, *, job: str, result: dict) -> dict:
        """The evaluate recipe's rank reports its result (as the job's owner)."""
        name = ref.partition("@")[0]
        return self.client.request("PUT", self._model(name, "evaluations",
                                                      quote(evaluation_id, safe="")),
                                   json={"job": job, "result": result})

    # -- testing: what gates champion ------------------------------------------------------

    def set_tests(self, ref: str, tests: list[dict], *, reason: str = "") -> dict:
        """The version's tests (docs/models.md): metric thresholds on an evaluation
        ({"kind": "metric", "metric": "accuracy", "min": 0.97, "dataset": "digits@v3",
        "split": "test"}, optionally "slice": {"field": "label", "value": "7"}), examples
        ({"kind": "example", "input": {"text": ...}, "expect": LABEL}) and invariances
        ({"kind": "invariance", "input": ..., "transform": "lowercase"})."""
        name, selector = _split(ref)
        return self.client.request("PUT", f"models/{name}/versions/{selector}/tests",
                                   json={"tests": tests, "reason": reason})

    def test(self, ref: str, *, progress: bool = True, timeout: float | None = None) -> dict:
        """Run the version's tests: an evaluation job per dataset version and split they
        measure (the first also runs the examples and invariances), then the platform
        judges them and records pass or fail on the version. Returns the outcome."""
        from loophub.models.gate import needed

        version = self.get(ref)
        exact = version["ref"]
        if not version["tests"]:
            raise errors.Conflict(f"{exact} has no tests; set them with models.set_tests")
        runs = needed(version["tests"])
        if not runs:  # only examples: they run in an evaluation on the training data
            if not version["dataset"]:
                raise errors.InvalidInput(f"{exact}: example tests run inside an evaluation; "
                                          "add a metric test naming a dataset version")
            runs = [{"dataset": version["dataset"], "split": "test", "slices": []}]
        done = [self.evaluate(exact, dataset=run["dataset"], split=run["split"],
                              slices=run["slices"], progress=progress, timeout=timeout,
                              checks=first)
                for first, run in zip([True] + [False] * len(runs), runs, strict=False)]
        name, selector = _split(exact)
        view = self.client.request("POST", f"models/{name}/versions/{selector}/test-runs",
                                   json={"evaluations": [e["id"] for e in done]})
        return view["test_results"]

    # -- changing ---------------------------------------------------------------------------

    def alias(self, name: str, alias: str, version: int | str, *, reason: str = "",
              force: bool = False) -> dict:
        """Point NAME@ALIAS at VERSION; champion needs passed tests unless FORCE."""
        return self.client.request("PUT", self._model(name, "aliases", quote(alias, safe="")),
                                   json={"version": version, "reason": reason, "force": force})

    def remove_alias(self, name: str, alias: str, *, reason: str = "") -> dict:
        return self.client.request("DELETE", self._model(name, "aliases",
                                                         quote(alias, safe="")),
                                   params={"reason": reason} if reason else {})

    def update(self, ref: str, *, tags: dict | None = None, card: dict | None = None,
               state: str | None = None, reason: str = "") -> dict:
        """A version's tags (None removes one), card or state (ready, archived)."""
        name, selector = _split(ref)
        body = {k: v for k, v in (("tags", tags), ("card", card), ("state", state))
                if v is not None}
        return self.client.request("PATCH", f"models/{name}/versions/{selector}",
                                   json={**body, "reason": reason})

    def share(self, name: str, *, visibility: str, group: str | None = None,
              reason: str = "") -> dict:
        body = {"visibility": visibility, "reason": reason}
        if group is not None:
            body["group"] = group
        return self.client.request("PATCH", self._model(name), json=body)

    def delete(self, ref: str, *, reason: str = "") -> dict:
        """Delete a version (NAME@v3), or the whole model (NAME)."""
        name, selector = ref.partition("@")[0], ref.partition("@")[2]
        params = {"reason": reason} if reason else {}
        if selector:
            return self.client.request("DELETE", self._model(name, "versions", quote(
                selector, safe="")), params=params)
        return self.client.request("DELETE", self._model(name), params=params)

    # -- model-assisted labeling ---------------------------------------------------------------

    def predict_into(self, dataset: str, model_ref: str, *, filter: dict | None = None,
                     batch_size: int = 256, progress: bool = True) -> dict:
        """Write version MODEL_REF's predictions on DATASET's draft records matching FILTER
        (the keys of client.datasets.records: split, annotated, label, annotator) as
        pre-annotations: model version and score recorded, never labels. A re-run replaces
        that model's earlier predictions. Returns {"predicted", "written", "annotations",
        "skipped", "model", ...} (loophub.client.assist)."""
        from loophub.client.assist import predict_into

        return predict_into(self.client, dataset, model_ref, filter=filter,
                            batch_size=batch_size, progress=progress)

    # -- comparing and trying versions -------------------------------------------------------

    def board(self, name: str) -> Any:
        """Model NAME's versions side by side, and "try it" (loophub.widgets.ModelBoard,
        the ``model_board`` entry point of ``loophub.notebook_widgets``: the SDK imports
        no widget, as for a Job's monitor)."""
        from importlib.metadata import entry_points

        found = [e for e in entry_points(group="loophub.notebook_widgets")
                 if e.name == "model_board"]
        if not found:
            raise errors.InvalidInput("the model board is not installed (loophub's widgets);"
                                      " from loophub.widgets import ModelBoard works as well")
        return found[0].load()(name, client=self.client)
