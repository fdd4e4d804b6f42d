"""Launch: a form behind tasks.spec.SweepSpec (the same object as the TOML file), with presets."""

from __future__ import annotations

import getpass
from typing import Any

import streamlit as st

from app.logic.launch import errors_by_field, form_to_spec, spec_to_form
from app.logic.presets import available_presets
from app.ui import resources
from engine.config import ACTIVATIONS, ARCHS, DATASETS, DTYPES, LOSSES, METRICS, ConfigError

P = "launch"
res = resources()
settings = res.settings
st.title("Launch a sweep")

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
with st.form(f"{P}.form"):
    st.text_input("Name", key=f"{P}.name")
    field_errors("name")
    m1, m2, m3, m4 = st.columns(4)
    with m1:
        st.selectbox("Architecture", ARCHS, key=f"{P}.model.arch")
        field_errors("model.arch")
    with m2:
        st.number_input("Width N", 1, 1 << 16, key=f"{P}.model.width")
        field_errors("model.width")
    with m3:
        st.number_input("Depth L (weight layers)", 2, 64, key=f"{P}.model.depth")
        field_errors("model.depth")
    with m4:
        st.selectbox("Activation", ACTIVATIONS, key=f"{P}.model.activation")
        st.checkbox("Centered (f − f₀)", key=f"{P}.model.centered")
        field_errors("model.activation")
    d1, d2 = st.columns(2)
    with d1:
        st.selectbox("Dataset", DATASETS, key=f"{P}.data.dataset")
        field_errors("data.dataset")
    with d2:
        st.text_input("Path in the data folder (file-backed sets)", key=f"{P}.data.path")
        field_errors("data.path")
    t1, t2, t3, t4, t5 = st.columns(5)
    with t1:
        st.selectbox("Loss", LOSSES, key=f"{P}.train.loss")
    with t2:
        st.number_input("Batch size", 1, 1 << 20, key=f"{P}.train.batch_size")
        field_errors("train.batch_size")
    with t3:
        st.number_input("Steps", 1, 100_000_000, key=f"{P}.train.steps")
        field_errors("train.steps")
    with t4:
        st.selectbox("Precision", DTYPES, key=f"{P}.train.dtype")
    with t5:
        st.number_input("Eval points", 0, 10_000, key=f"{P}.train.eval_points")
        field_errors("train.eval_points")
    st.multiselect("Costly metrics on the eval schedule", METRICS, key=f"{P}.train.metrics")
    field_errors("train.metrics")
    g1, g2, g3 = st.columns([2, 2, 1])
    with g1:
        st.text_input("γ values (list, or log range from .. to / per decade)", key=f"{P}.grid.gamma")
        field_errors("grid.gamma")
    with g2:
        st.text_input("η values (raw; SGD step = N·η)", key=f"{P}.grid.eta")
        field_errors("grid.eta")
    with g3:
        st.text_input("Seeds", key=f"{P}.grid.seeds")
        field_errors("grid.seeds")
    with st.expander("Advanced: adaptive η range, teacher data, ViT, divergence"):
        a1, a2, a3 = st.columns(3)
        with a1:
            st.checkbox("Adaptive η range", key=f"{P}.grid.adaptive",
                        help="Per γ, find η_max from the top of the η grid, then train only down to "
                             "η_max / 10^k: the reference protocol, in rounds")
        with a2:
            st.number_input("k: decades below η_max", 0.0, 20.0, step=0.5, key=f"{P}.grid.below_max_decades")
            field_errors("grid.below_max_decades")
        with a3:
            st.number_input("Divergence factor (× step-0 loss × max(1, 1/γ²))", min_value=1.0, format="%g",
                            key=f"{P}.train.divergence_factor")
            field_errors("train.divergence_factor")
        b1, b2, b3, b4 = st.columns(4)
        with b1:
            st.number_input("Teacher input dim", 1, 1 << 20, key=f"{P}.data.input_dim")
            field_errors("data.input_dim")
        with b2:
            st.number_input("Teacher image size (0 = vectors)", 0, 1024, key=f"{P}.data.image_size")
            field_errors("data.image_size")
        with b3:
            st.number_input("Teacher channels", 1, 64, key=f"{P}.data.channels")
            field_errors("data.channels")
        with b4:
            st.number_input("Classes / outputs", 1, 100_000, key=f"{P}.data.n_classes")
            field_errors("data.n_classes")
        c1, c2, c3, c4 = st.columns(4)
        with c1:
            st.number_input("Label noise", min_value=0.0, format="%g", key=f"{P}.data.noise")
            field_errors("data.noise")
        with c2:
            st.number_input("Held-out test size", 1, 10_000_000, key=f"{P}.data.test_size")
            field_errors("data.test_size")
        with c3:
            st.number_input("Data seed", 0, 2**31 - 1, key=f"{P}.data.data_seed")
            field_errors("data.data_seed")
        with c4:
            st.number_input("Probe batch (alignment, sharpness)", 1, 1 << 16, key=f"{P}.train.probe_size")
            field_errors("train.probe_size")
        v1, v2 = st.columns(2)
        with v1:
            st.number_input("ViT patch", 1, 64, key=f"{P}.model.patch")
            field_errors("model.patch")
        with v2:
            st.number_input("ViT heads", 1, 64, key=f"{P}.model.heads")
            field_errors("model.heads")
    executor = st.radio("Run on", ["local", "celery"], horizontal=True, key=f"{P}.executor",
                        disabled=settings.embedded, help="celery needs GAMMA_LAB_BROKER_URL")
    check = st.form_submit_button("Check plan")
    launch = st.form_submit_button("Launch", type="primary")


def build() -> Any:
    """The SweepSpec from the form, or None after storing every error for its field."""
    from tasks.spec import SpecError, SweepSpec, validate_spec

    values = {k[len(P) + 1:]: v for k, v in st.session_state.items() if isinstance(k, str) and k.startswith(P + ".")}
    spec_dict, form_errors = form_to_spec(values)
    found: list[ConfigError] = list(form_errors)
    spec = None
    if not form_errors:
        try:
            spec = SweepSpec.from_dict(spec_dict)
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
    from tasks.planner import plan

    p = plan(spec, settings, device="cpu")
    st.session_state[f"{P}.plan"] = (p.n_cells, p.n_units, p.wall_seconds)
    if launch:
        from tasks.api import submit

        sweep_id = submit(spec, settings, executor=st.session_state.get(f"{P}.executor", "local"),
                          owner=getpass.getuser())
        st.session_state[f"{P}.launched"] = sweep_id

if f"{P}.plan" in st.session_state:
    n_cells, n_units, seconds = st.session_state[f"{P}.plan"]
    c1, c2, c3 = st.columns(3)
    c1.metric("Cells (γ × η × seed)", f"{n_cells:,}")
    c2.metric("Work units", f"{n_units:,}")
    c3.metric("Estimated time", f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s",
              help=f"Rough wall time with {settings.workers} local worker(s): start-up plus FLOPs at a "
                   "typical sustained rate (tasks/planner.py); never a deadline.")
if f"{P}.launched" in st.session_state:
    sweep_id = st.session_state[f"{P}.launched"]
    st.success(f"Launched sweep {sweep_id}.")
    st.page_link("views/portrait.py", label="Open its phase portrait", icon=":material/grid_on:",
                 query_params={"sweep": sweep_id})
