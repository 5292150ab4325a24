"""A policy in plain words, for data stewards who read it rather than edit YAML."""

from __future__ import annotations

from policies.schema import DEFAULT_FUNCTIONS, DEFAULT_LAYERS, SitePolicy

_ACCOUNTANT_WORDS = {"rdp": "Rényi DP (Opacus)", "prv": "privacy random variables (Opacus)",
                     "pld": "privacy loss distributions (Google's dp-accounting)"}


def explain(policy: SitePolicy) -> list[str]:
    out: list[str] = []
    if policy.approval == "auto":
        out.append("Requests that pass every rule are approved automatically; the record "
                   "says so. Anything else waits for a reviewer.")
    else:
        out.append("Every request waits for a reviewer's decision in the approval console.")
    who = ", ".join(policy.reviewers)
    if policy.approvals_required == 2:
        out.append(f"Two different reviewers must approve a plan before it can run "
                   f"(four-eyes rule). Reviewers: {who}.")
    else:
        out.append(f"One reviewer's approval is enough. Reviewers: {who}.")
    for name, ds in policy.datasets.items():
        title = "Any other dataset" if name == "*" else f"Dataset {name}"
        out.append("")
        out.append(f"{title}:")
        a, p, t, r = ds.access, ds.privacy, ds.training, ds.release
        people = []
        if a.researchers:
            people.append("the researchers " + ", ".join(a.researchers))
        if a.domains:
            people.append("anyone with an email address at " + ", ".join(a.domains))
        out.append("  Who: " + (" and ".join(people) if people else "nobody") + "."
                   + (f" Their account's institution must be one of: "
                      f"{', '.join(a.institutions)}." if a.institutions else "")
                   + (f" Access ends after {a.expires.isoformat()}." if a.expires else
                      " Access does not expire."))
        out.append(f"  Privacy: each plan may spend at most ε = {p.epsilon_per_plan:g} "
                   f"(δ at most {p.delta_max:g}); one researcher at most ε = "
                   f"{p.epsilon_total:g} over all their plans on it. Training noise must be "
                   f"at least σ = {p.min_noise_multiplier:g} with per-example gradients "
                   f"clipped to at most {p.max_grad_norm:g}.")
        relation = ("replace-one adjacency: the number of patients is public, and ε bounds "
                    "what anyone can learn about one patient's record being replaced by "
                    "another's" if r.adjacency == "replace_one" else
                    "add/remove adjacency: the number of patients is private, and ε bounds "
                    "what anyone can learn about whether one patient is in the data at "
                    "all; the site releases the count only once, with Gaussian noise of "
                    f"standard deviation {r.count_noise:g} patients, and charges it to "
                    "every ledger")
        out.append(f"  Guarantee: every ε is stated at its δ, per patient, under {relation}. "
                   f"Accounted with {_ACCOUNTANT_WORDS[ds.ledger_accountant]}, which also "
                   "derives each plan's noise. Every run that touched the data is charged "
                   "and counts as a round, whether it released weights or failed.")
        device = "the site's default device" if t.device == "auto" else t.device
        out.append(f"  Training: at most {t.max_rounds} rounds of at most {t.max_local_epochs} "
                   f"local epochs, batches of {t.batch_size.min} to {t.batch_size.max}, models "
                   f"of at most {t.max_parameters:,} parameters, each round stopped after "
                   f"{t.max_wall_time_s} s, on {device}.")
        layers = "the default list" if list(ds.model_code.layers) == list(DEFAULT_LAYERS) \
            else ", ".join(ds.model_code.layers)
        funcs = "the default list" if list(ds.model_code.functions) == list(DEFAULT_FUNCTIONS) \
            else ", ".join(ds.model_code.functions)
        out.append(f"  Model code: torch layers from {layers}; functions from {funcs}. No "
                   "imports, file access, introspection or writes to the model's own state; "
                   "checked automatically on every request.")
        count = {"exact": "the exact number of patients used",
                 "rounded": f"the noised patient count rounded to a multiple of "
                            f"{r.round_to}",
                 "hidden": "no patient count"}[r.sample_count]
        timing = (f" A round's duration is padded to a multiple of {r.pad_seconds} s, and "
                  "each training step does a fixed amount of work."
                  if r.pad_seconds else " A round's duration is not padded: it can depend on "
                  "the batches drawn.")
        out.append(f"  Released after each round: DP-noised model weights, the privacy "
                   f"accounting and {count}.{timing}")
        if ds.audit.holdout_fraction:
            out.append(f"  Audit: {ds.audit.holdout_fraction:.0%} of the patients are held out "
                       "of training at publication, for the data owner's privacy audit.")
    return out
