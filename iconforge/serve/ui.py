"""The web UI, a thin client of the HTTP API: `python -m streamlit run iconforge/serve/ui.py`
from the repository root, with ICONFORGE_API_URL (and ICONFORGE_API_KEY) set as for the client.

The script polls a running job inside one run; a click (Cancel, reuse) makes Streamlit stop that
run and start the next, whose callbacks act first."""
from __future__ import annotations

import uuid

import streamlit as st

from iconforge.serve.client import FINISHED, ApiError, Client

st.set_page_config(page_title="iconforge", page_icon="🧬", layout="wide")
state = st.session_state
api = Client.from_env()
state.setdefault("client_id", f"ui:{uuid.uuid4().hex[:16]}")  # this browser session, for the per-client cap
state.setdefault("results", {})  # the shown job's id -> [(seed, png, svg)]; one job only

try:
    info = api.model()
except ApiError as e:
    st.error(f"The generation API is not available: {e.message}")
    st.stop()
limits, defaults = info["limits"], info["defaults"]
sizes = list(range(limits["min_size"], limits["max_size"] + 1, limits["size_step"]))
# Widget defaults live in the session state (not in the widget calls) so that "reuse" can set them.
for key, value in dict(n=limits["max_images"], seed_mode="random", seed=0, steps=defaults["steps"],
                       guidance=float(defaults["guidance"]), strength=1.0,
                       size=defaults["size"] if defaults["size"] in sizes else sizes[0]).items():
    state.setdefault(key, value)


def describe(model: dict) -> str:
    exp = f", experiment **{model['experiment']}**" if model.get("experiment") else ""
    commit = f" ({model['commit'][:10]})" if model.get("commit") else ""
    return (f"Model: base `{model['base']}`, revision **{model['revision']}**{commit}{exp}, "
            f"adapter `{model['adapter_sha256'][:12]}`, trigger “{model['trigger']}”, on {model['device']}")


def reuse(seed: int) -> None:
    state.update(seed_mode="fixed", seed=seed, n=1)


def cancel(job_id: str) -> None:
    try:
        api.cancel(job_id)
    except ApiError as e:
        st.toast(e.message)


def submit() -> None:
    req = {"prompt": state.prompt, "n": state.n, "steps": state.steps, "guidance": state.guidance,
           "size": state.size, "strength": state.strength}
    if state.seed_mode == "fixed":
        req["seed"] = state.seed
    try:
        state.job = api.submit(req, client_id=state.client_id)["id"]
        state.pop("error", None)
    except ApiError as e:
        state.error = e.message + (f" (retry in {e.retry_after} s)" if e.retry_after else "")


st.title("iconforge")
st.caption(describe(info))

with st.form("generate"):
    st.text_input("Prompt", key="prompt", max_chars=limits["max_prompt_chars"], placeholder="zebrafish embryo")
    left, right = st.columns(2)
    left.slider("Images", 1, limits["max_images"], key="n")
    right.radio("Seed", ["random", "fixed"], key="seed_mode", horizontal=True)
    right.number_input("Seed value (fixed)", 0, limits["max_seed"] - limits["max_images"] + 1, key="seed")
    with st.expander("Advanced"):
        st.number_input("Steps", 1, limits["max_steps"], key="steps")
        st.number_input("Guidance", 0.0, float(limits["max_guidance"]), step=0.5, key="guidance")
        st.select_slider("Size (px)", sizes, key="size")
        st.slider("LoRA strength", 0.0, float(limits["max_strength"]), step=0.05, key="strength")
    st.form_submit_button("Generate", type="primary", on_click=submit)

if "error" in state:
    st.error(state.error)

job_id = state.get("job")
if job_id:
    try:
        view = api.job(job_id)
        if view["status"] not in FINISHED:
            live = st.empty()  # Cancel and the progress bar, cleared when the job ends
            with live.container():
                st.button("Cancel", on_click=cancel, args=(job_id,))
                bar = st.progress(0.0, text="queued")

            def show(v: dict) -> None:
                text = f"queued, position {v['position']}" if v["status"] == "queued" else \
                    f"drawing: step {v['steps_done']} of {v['steps_total']}"
                bar.progress(v["progress"], text=text)

            view = api.wait(job_id, on_update=show)
            live.empty()
        if view["status"] == "done" and job_id not in state.results:
            state.results = {job_id: [(im["seed"], api.png(job_id, im["index"]), api.svg(job_id, im["index"]))
                                      for im in view["images"]]}
    except ApiError as e:  # e.g. the job expired on the server
        st.error(e.message)
        state.pop("job")
        st.stop()
    if view["status"] != "done":
        st.warning(f"Job {view['status']}" + (f": {view['error']}" if view.get("error") else ""))
    else:
        s = view["settings"]
        st.caption(f"“{s['prompt_sent']}”, {s['steps']} steps, guidance {s['guidance']}, {s['size']} px, "
                   f"strength {s['strength']}. {describe(view['model'])}")
        for col, (seed, png, svg) in zip(st.columns(limits["max_images"]), state.results[job_id]):
            col.image(png, caption=f"seed {seed}", width="stretch")
            col.download_button("PNG", png, f"iconforge-{seed}.png", "image/png", key=f"png-{job_id}-{seed}")
            col.download_button("SVG", svg, f"iconforge-{seed}.svg", "image/svg+xml", key=f"svg-{job_id}-{seed}")
            col.button("reuse seed", key=f"reuse-{job_id}-{seed}", on_click=reuse, args=(seed,))
