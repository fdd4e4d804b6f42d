"""Launch: a form behind tasks.spec.SweepSpec (the same object as the TOML file), with presets."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.auth import current_actor
from app.logic.launch import check_form, errors_by_field, spec_to_form
from app.logic.presets import available_presets
from app.ui import read_only_help, read_only_notice, resources
from engine.config import ACTIVATIONS, ARCHS, DATASETS, DTYPES, LOSSES, METRICS, OPTIMIZERS, ConfigError

P = "launch"
res = resources()
settings = res.settings
st.title("Launch a sweep")
read_only = read_only_notice(res, "launching")  # the form still checks a plan; the Launch button is off

presets = available_presets(settings.data_dir)
# Clone-and-edit from the Runs page leaves a spec dict in session state.
cloned: dict[str, Any] | None = st.session_state.pop("launch.clone", None)


def load(spec: dict[str, Any]) -> None:
    for name, value in spec_to_form(spec).items():
        st.session_state[f"{P}.{name}"] = value


if cloned is not None:
    load(cloned)
    st.info(f"Cloned from sweep {cloned.get('name', '')!r}: edit and launch.")
elif f"{P}.name" not in st.session_state:
    load(next(iter(presets.values())))

col_p, col_b = st.columns([3, 1])
preset = col_p.selectbox("Preset", list(presets), key=f"{P}.preset")
if col_b.button("Load preset", key=f"{P}.load"):
    load(presets[preset])
    st.rerun()

errors: dict[str, list[str]] = st.session_state.get(f"{P}.errors", {})


def field_errors(name: str) -> None:
    for message in errors.get(name, []):
        st.error(message, icon=":material/error:")


for message in errors.get("spec", []):
    st.error(message)
def field(where: Any, kind: str, label: str, name: str, *args: Any, **kwargs: Any) -> None:
    """One form widget in `where` (a column or an expander), bound to the spec field `name`, with
    that field's errors under it."""
    with where:
        getattr(st, kind)(label, *args, key=f"{P}.{name}", **kwargs)
        field_errors(name)


with st.form(f"{P}.form"):
    field(st.container(), "text_input", "Name", "name")
    m = st.columns(4)
    field(m[0], "selectbox", "Architecture", "model.arch", ARCHS)
    field(m[1], "number_input", "Width N", "model.width", 1, 1 << 16)
    field(m[2], "number_input", "Depth L (weight layers)", "model.depth", 2, 64)
    field(m[3], "selectbox", "Activation", "model.activation", ACTIVATIONS)
    field(m[3], "checkbox", "Centered (f − f₀)", "model.centered")
    d = st.columns(2)
    field(d[0], "selectbox", "Dataset", "data.dataset", DATASETS)
    field(d[1], "text_input", "Path in the data folder (file-backed sets)", "data.path")
    t = st.columns(5)
    field(t[0], "selectbox", "Loss", "train.loss", LOSSES)
    field(t[0], "selectbox", "Optimizer", "train.optimizer", OPTIMIZERS,
          help="sgd: step N·η; adam: rate η/sqrt(fan_in) per layer before the readout, η at the readout")
    field(t[1], "number_input", "Batch size", "train.batch_size", 1, 1 << 20)
    field(t[2], "number_input", "Steps", "train.steps", 1, 100_000_000)
    field(t[3], "selectbox", "Precision", "train.dtype", DTYPES)
    field(t[4], "number_input", "Eval points", "train.eval_points", 0, 10_000)
    field(t[4], "number_input", "Metrics' time budget (share of training; 0: none)", "train.eval_budget", 0.0, 1000.0,
          help="fewer eval points on short runs so that the costly metrics take at most this share of the "
          "training time, by the cost model below (never fewer than 3: the first step, one between, the "
          "last); 0 keeps every point asked for, up to one per 20 steps")
    field(st.container(), "multiselect", "Costly metrics on the eval schedule", "train.metrics", METRICS,
          help="test, alignment, sharpness, movement: at the log-spaced eval steps; function: once, at the end "
          "(the outputs and the last layer's Gram matrix on 256 test inputs, for comparing runs' functions)")
    g = st.columns([2, 2, 1])
    field(g[0], "text_input", "γ values (list, or log range from .. to / per decade)", "grid.gamma")
    field(g[1], "text_input", "η values (raw; SGD step = N·η)", "grid.eta")
    field(g[2], "text_input", "Seeds", "grid.seeds")
    with st.expander("Advanced: adaptive η range, teacher data, ViT, divergence"):
        a = st.columns(3)
        field(a[0], "checkbox", "Adaptive η range", "grid.adaptive",
              help="Per γ, find η_max from the top of the η grid, then train only down to η_max / 10^k: "
                   "the reference protocol, in rounds")
        field(a[1], "number_input", "k: decades below η_max", "grid.below_max_decades", 0.0, 20.0, step=0.5)
        field(a[2], "number_input", "Divergence factor (× step-0 loss × max(1, 1/γ²))", "train.divergence_factor",
              min_value=1.0, format="%g")
        b = st.columns(4)
        field(b[0], "number_input", "Teacher input dim", "data.input_dim", 1, 1 << 20)
        field(b[1], "number_input", "Teacher image size (0 = vectors)", "data.image_size", 0, 1024)
        field(b[2], "number_input", "Teacher channels", "data.channels", 1, 64)
        field(b[3], "number_input", "Classes / outputs", "data.n_classes", 1, 100_000)
        c = st.columns(4)
        field(c[0], "number_input", "Label noise", "data.noise", min_value=0.0, format="%g")
        field(c[1], "number_input", "Held-out test size", "data.test_size", 1, 10_000_000)
        field(c[2], "number_input", "Data seed", "data.data_seed", 0, 2**31 - 1)
        field(c[3], "number_input", "Probe batch (alignment, sharpness)", "train.probe_size", 1, 1 << 16)
        v = st.columns(2)
        field(v[0], "number_input", "ViT patch", "model.patch", 1, 64)
        field(v[1], "number_input", "ViT heads", "model.heads", 1, 64)
    executor = st.radio("Run on", ["local", "celery"], horizontal=True, key=f"{P}.executor",
                        disabled=settings.embedded, help="celery needs GAMMA_LAB_BROKER_URL")
    check = st.form_submit_button("Check plan")
    launch = st.form_submit_button("Launch", type="primary", disabled=read_only, help=read_only_help(res))


def build() -> Any:
    """The SweepSpec from the form, or None after storing every error for its field."""
    from tasks.spec import SpecError, validate_spec

    values = {k[len(P) + 1:]: v for k, v in st.session_state.items() if isinstance(k, str) and k.startswith(P + ".")}
    spec, found = check_form(values, settings.max_cells)  # every field's problems at once; grid counted first
    if spec is not None:
        try:
            for warning in validate_spec(spec, settings):
                st.warning(warning)
        except SpecError as exc:
            found.extend(exc.errors)
            spec = None
        except ConfigError as exc:
            found.append(exc)
            spec = None
    st.session_state[f"{P}.errors"] = errors_by_field(found)
    return spec


if check or launch:
    spec = build()
    if spec is None:
        st.rerun()  # show the errors at their fields
    from tasks.local_queue import warm_workers
    from tasks.planner import plan

    # the start-up is paid already when the dashboard's workers wait warm (tasks.local_queue.warm_up)
    p = plan(spec, settings, device="cpu", warm=warm_workers(settings) > 0)
    st.session_state[f"{P}.plan"] = (p.n_cells, p.n_units, p.wall_seconds)
    st.session_state[f"{P}.memory"] = p.memory_note  # more units than workers because of device_memory
    from app.logic.eval_cost import cost_caption

    st.session_state[f"{P}.cost"] = cost_caption(spec)  # what the chosen costly metrics add to training
    if launch and not read_only:
        from tasks.api import submit

        actor = current_actor()  # the logged-in user launches and owns it (the local user when nobody logs in)
        sweep_id = submit(spec, settings, executor=st.session_state.get(f"{P}.executor", "local"),
                          owner=actor.name, actor=actor)
        st.session_state[f"{P}.launched"] = sweep_id
        # straight to the portrait that fills in (it says "Launched sweep …" once)
        st.session_state["portrait.launched"] = sweep_id
        st.switch_page("views/portrait.py", query_params={"sweep": sweep_id})

if f"{P}.plan" in st.session_state:
    n_cells, n_units, seconds = st.session_state[f"{P}.plan"]
    c1, c2, c3 = st.columns(3)
    c1.metric("Cells (γ × η × seed)", f"{n_cells:,}")
    c2.metric("Work units", f"{n_units:,}")
    c3.metric("Estimated time", f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s",
              help=f"Rough wall time with {settings.workers} local worker(s): start-up plus FLOPs at the rate "
                   "this machine's workers measured on their last units, scaled by the load now (a typical "
                   "rate before the first one; tasks/planner.py); never a deadline.")
    if st.session_state.get(f"{P}.cost"):
        st.caption(st.session_state[f"{P}.cost"])
    if st.session_state.get(f"{P}.memory"):
        note = st.session_state[f"{P}.memory"]
        st.caption(f"{note[0].upper()}{note[1:]} (the device_memory setting, tasks/planner.py).")
if f"{P}.launched" in st.session_state:
    sweep_id = st.session_state[f"{P}.launched"]
    st.success(f"Launched sweep {sweep_id}.")
    st.page_link("views/portrait.py", label="Open its phase portrait", icon=":material/grid_on:",
                 query_params={"sweep": sweep_id})
