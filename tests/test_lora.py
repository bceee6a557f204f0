"""LoRA by name from the LoRA folder, per request and pinned, on both services (real peft adapters)."""


import pytest
from conftest import ON_BOTH_IN_QUICK, gen, pixels



def test_loras_lists_the_folder_with_rank_and_targets(svc):
    body = svc.client.get("/loras").json()
    by_name = {e["name"]: e for e in body["available"]}
    assert by_name["style"]["rank"] == 4
    assert by_name["style"]["target_modules"] == ["attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]
    assert by_name["detail"]["target_modules"] == ["attn.to_q", "attn.to_v"]
    assert by_name["detail"]["size_bytes"] > 0
    assert "sub/nested" in by_name
    assert "error" in by_name["corrupt"]
    assert "escape" not in by_name  # a symlink out of the folder is not offered
    assert "pinned" in body and "loaded" in body


@ON_BOTH_IN_QUICK  # a core contract: the quick tier checks it on FP4 too
def test_per_request_lora_changes_the_image_and_does_not_leak(clean):
    svc = clean
    base = pixels(gen(svc))
    styled = gen(svc, lora_name="style")
    assert styled.json()["loras"] == [{"name": "style", "weight": 1.0}]
    assert pixels(styled) != base
    half = pixels(gen(svc, lora_name="style", lora_weight=0.5))
    assert half not in (base, pixels(styled))
    assert pixels(gen(svc)) == base  # the next request gets the base model, exactly
    both = pixels(gen(svc, loras=[{"name": "style", "weight": 1.0}, {"name": "detail", "weight": 1.0}]))
    assert both not in (base, pixels(styled), pixels(gen(svc, lora_name="detail")))
    assert pixels(gen(svc)) == base


@ON_BOTH_IN_QUICK  # a core contract: the quick tier checks it on FP4 too
def test_pinned_lora_applies_until_removed_and_removal_restores_exact_bytes(clean):
    svc = clean
    base = pixels(gen(svc))
    st = svc.client.post("/apply-lora", json={"lora_name": "style", "lora_weight": 0.8})
    assert st.status_code == 200, st.text
    assert st.json()["pinned"] == [{"name": "style", "weight": 0.8}]
    assert svc.client.get("/lora-status").json()["pinned"] == [{"name": "style", "weight": 0.8}]
    pinned = gen(svc)
    assert pinned.json()["loras"] == [{"name": "style", "weight": 0.8}]
    assert pixels(pinned) != base
    # a per-request LoRA overrides the pinned one for that request only
    assert gen(svc, lora_name="detail").json()["loras"] == [{"name": "detail", "weight": 1.0}]
    assert pixels(gen(svc)) == pixels(pinned)
    removed = svc.client.post("/remove-lora", json={"lora_name": "style"})
    assert removed.status_code == 200 and removed.json()["pinned"] == []
    assert pixels(gen(svc)) == base


def test_remove_all_unloads_every_adapter(clean):
    svc = clean
    svc.client.post("/apply-lora", json={"loras": [{"name": "style"}, {"name": "detail", "weight": 0.3}]})
    assert len(svc.client.get("/lora-status").json()["pinned"]) == 2
    st = svc.client.post("/remove-lora").json()
    assert st["pinned"] == [] and st["loaded"] == []


@pytest.mark.parametrize(
    "name,code,says",
    [
        ("../style", 422, "a path inside the LoRA folder"),
        ("/etc/passwd", 422, "a path inside the LoRA folder"),
        ("escape", 422, "outside the LoRA folder"),
        ("evil.pt", 422, "not a .safetensors file"),
        ("corrupt", 422, "not a readable safetensors"),
        ("missing", 404, "was not found"),
    ],
)
def test_bad_lora_names_are_refused_and_change_nothing(clean, name, code, says):
    svc = clean
    svc.client.post("/apply-lora", json={"lora_name": "style"})
    before_status = svc.client.get("/lora-status").json()
    before = pixels(gen(svc))
    for r in (gen(svc, lora_name=name), svc.client.post("/apply-lora", json={"lora_name": name})):
        assert r.status_code == code, r.text
        assert says in r.json()["error"]["message"]
    assert svc.client.get("/lora-status").json() == before_status
    assert pixels(gen(svc)) == before


def test_failed_apply_of_a_set_leaves_the_pinned_set(clean):
    svc = clean
    svc.client.post("/apply-lora", json={"lora_name": "detail", "lora_weight": 0.7})
    before = svc.client.get("/lora-status").json()
    r = svc.client.post("/apply-lora", json={"loras": [{"name": "style"}, {"name": "missing"}]})
    assert r.status_code == 404
    assert svc.client.get("/lora-status").json() == before  # pinned and loaded adapters alike


def test_remove_unknown_lora_is_a_clear_error(clean):
    r = clean.client.post("/remove-lora", json={"lora_name": "never-applied"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "lora_not_pinned"
    assert "neither pinned nor loaded" in r.json()["error"]["message"]


def test_nested_lora_name(clean):
    r = gen(clean, lora_name="sub/nested")
    assert r.status_code == 200 and r.json()["loras"][0]["name"] == "sub/nested"
