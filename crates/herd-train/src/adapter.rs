//! LoRA adapters in PEFT's files: `adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.<module path>.lora_{A,B}.weight` (no adapter name), f32 tensors. herd
//! writes what `PeftModel.from_pretrained` loads unchanged, and reads what PEFT writes for
//! Llama 4 — `target_modules` on nn.Linear layers and `target_parameters` on the fused expert
//! tensors — and applies it to an inference model as unmerged low-rank updates
//! ([`herd_model::nn::LowRank`]), so a quantized or bf16 base stays as stored.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use herd_model::nn::{Linear, LowRank};
use herd_model::weights::safetensors::SafetensorsFile;
use herd_model::TextModel;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::lora::{LoraSettings, ALL_LINEAR, ROUTER_PARAMETER};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// An adapter's change to one weight, for merging.
#[derive(Debug, Clone)]
pub enum Delta {
    /// (α/r)·B A for an nn.Linear, [out, in].
    Module(Tensor),
    /// Per expert (α/r)·B_e A_e in transformers' fused layout, [E, d1, d2].
    Experts(Tensor),
}

/// An adapter as read from disk.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub settings: LoraSettings,
    pub base_model: Option<String>,
    /// PEFT key → tensor (f32).
    pub tensors: BTreeMap<String, Tensor>,
}

impl Adapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let bytes = herd_limits::read_file(&config_path, herd_limits::FileKind::Config)?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Adapter(format!("{}: {e}", config_path.display())))?;
        let settings = settings_from_config(&value)
            .map_err(|e| Error::Adapter(format!("{}: {e}", config_path.display())))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !herd_limits::exists(&weights_path) {
            let hint = if herd_limits::exists(&dir.join("adapter_model.bin")) {
                " (adapter_model.bin is a pickle, which herd does not load: re-save it with safe_serialization=True)"
            } else {
                ""
            };
            return Err(Error::Adapter(format!(
                "{} is missing{hint}",
                weights_path.display()
            )));
        }
        let file = SafetensorsFile::open(&weights_path)?;
        let mut tensors = BTreeMap::new();
        for (name, info) in file.tensors() {
            let t = file.read_dense(name, info)?.to_dtype(DType::F32)?;
            tensors.insert(name.clone(), t);
        }
        Ok(Adapter {
            settings,
            base_model: value
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            tensors,
        })
    }

    /// Writes the adapter as PEFT saves it. `tensors`: PEFT key → value; `text_prefix`: the
    /// text layers' module path (`model.`, or `language_model.model.` in a multimodal model).
    pub fn save(
        dir: &Path,
        settings: &LoraSettings,
        base_model: Option<&str>,
        text_prefix: &str,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let config = serde_json::to_vec_pretty(&config_json(settings, base_model, text_prefix))
            .map_err(|e| Error::Adapter(e.to_string()))?;
        crate::trainer::replace_file(&dir.join(CONFIG_FILE), |p| {
            std::fs::write(p, &config).map_err(|source| Error::Io {
                path: p.to_path_buf(),
                source,
            })
        })?;
        let owned: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<Result<_>>()?;
        crate::trainer::replace_file(&dir.join(WEIGHTS_FILE), |p| {
            candle_core::safetensors::save(&owned, p).map_err(Error::from)
        })
    }

    /// Replaces every adapted linear of `model` by its base plus the low-rank update; every
    /// tensor of the adapter must find its layer (an adapter for another shape of model, or
    /// for the vision tower, is refused rather than half applied).
    pub fn apply(&self, model: &mut TextModel) -> Result<()> {
        let stems = self.stems()?;
        let scaling = self.settings.scaling();
        let rank = self.settings.rank;
        let mut used: BTreeMap<&str, ()> = BTreeMap::new();
        let tensors = &self.tensors;
        let pair = |stem: &str| -> Option<(&Tensor, &Tensor)> {
            Some((
                tensors.get(&format!("{stem}.lora_A.weight"))?,
                tensors.get(&format!("{stem}.lora_B.weight"))?,
            ))
        };
        let mut apply_one = |path: &str, linear: &mut Linear| -> herd_model::Result<()> {
            let update = if let Some((stem, expert, proj)) = expert_path(path) {
                // PEFT's fused expert factors; see crate::lora for the layout.
                let param = if proj == "down_proj" {
                    "down_proj"
                } else {
                    "gate_up_proj"
                };
                let Some(stem) = stems.experts.get(&(stem.to_string(), param)) else {
                    return Ok(());
                };
                let Some((a, b)) = pair(stem) else {
                    return Ok(());
                };
                used.insert(stem.as_str(), ());
                Some(expert_update(a, b, expert, proj, linear.dims()?, rank, scaling).map_err(to_model)?)
            } else if let Some(stem) = stems.modules.get(path) {
                let Some((a, b)) = pair(stem) else {
                    return Ok(());
                };
                used.insert(stem.as_str(), ());
                Some(LowRank::new(a.clone(), b.clone(), scaling)?)
            } else {
                None
            };
            if let Some(update) = update {
                *linear = linear.clone().adapted(update)?;
            }
            Ok(())
        };
        model.visit_linears(&mut apply_one)?;
        let unused: Vec<&String> = stems
            .all
            .iter()
            .filter(|s| !used.contains_key(s.as_str()))
            .collect();
        if let Some(first) = unused.first() {
            return Err(Error::Adapter(format!(
                "{} of the adapter's modules are not in this model (first: `{first}`): was it trained on another model?",
                unused.len()
            )));
        }
        Ok(())
    }

    /// Each adapted weight's change, by module path below the text model
    /// (`layers.0.self_attn.q_proj`, or `layers.1.feed_forward.experts.gate_up_proj` for a fused
    /// expert tensor).
    pub fn deltas(&self) -> Result<Vec<(String, Delta)>> {
        let stems = self.stems()?;
        let scaling = self.settings.scaling();
        let pair = |stem: &str| -> Result<(&Tensor, &Tensor)> {
            let get = |k: &str| {
                self.tensors
                    .get(&format!("{stem}.{k}.weight"))
                    .ok_or_else(|| Error::Adapter(format!("`{stem}` has no {k}")))
            };
            Ok((get("lora_A")?, get("lora_B")?))
        };
        let mut out = Vec::new();
        for (path, stem) in &stems.modules {
            let (a, b) = pair(stem)?;
            out.push((path.clone(), Delta::Module((b.matmul(a)? * scaling)?)));
        }
        for ((experts_path, param), stem) in &stems.experts {
            let (a, b) = pair(stem)?;
            let (ra, _) = a.dims2()?;
            let (out_dim, _) = b.dims2()?;
            let r = self.settings.rank;
            if r == 0 || ra % r != 0 {
                return Err(Error::Adapter(format!(
                    "`{stem}`: {ra} rows of lora_A are not a multiple of r = {r}"
                )));
            }
            let n = ra / r;
            let per_expert = (0..n)
                .map(|e| {
                    let a_e = a.narrow(0, e * r, r)?; // [r, d2]
                    let b_e = b
                        .reshape((out_dim, r, n))?
                        .narrow(2, e, 1)?
                        .reshape((out_dim, r))?; // [d1, r]
                    Ok((b_e.matmul(&a_e)? * scaling)?)
                })
                .collect::<Result<Vec<_>>>()?;
            out.push((
                format!("{experts_path}.{param}"),
                Delta::Experts(Tensor::stack(&per_expert, 0)?),
            ));
        }
        out.sort_by(|x, y| x.0.cmp(&y.0));
        Ok(out)
    }

    /// The adapter's module stems, indexed by the inference model's module paths.
    fn stems(&self) -> Result<Stems> {
        let mut all = Vec::new();
        for key in self.tensors.keys() {
            let stem = key
                .strip_suffix(".lora_A.weight")
                .or_else(|| key.strip_suffix(".lora_B.weight"))
                .ok_or_else(|| {
                    Error::Adapter(format!(
                        "`{key}` is not a LoRA factor (herd reads lora_A/lora_B weights only; no biases, DoRA or modules_to_save)"
                    ))
                })?;
            if !all.iter().any(|s: &String| s == stem) {
                all.push(stem.to_string());
            }
        }
        let mut modules = HashMap::new();
        let mut experts = HashMap::new();
        for stem in &all {
            let path = text_path(stem).ok_or_else(|| {
                Error::Adapter(format!(
                    "`{stem}` is not a module of the text model (herd applies adapters to the text layers only)"
                ))
            })?;
            // PEFT nests one wrapper per targeted parameter of the same module; the last one
            // listed is outermost.
            if let Some(experts_path) = path.strip_suffix(".feed_forward.experts.base_layer") {
                experts.insert(
                    (format!("{experts_path}.feed_forward.experts"), "gate_up_proj"),
                    stem.clone(),
                );
            } else if let Some(experts_path) = path.strip_suffix(".feed_forward.experts") {
                let param = if self.settings.targets_parameter("feed_forward.experts.down_proj") {
                    "down_proj"
                } else {
                    "gate_up_proj"
                };
                experts.insert(
                    (format!("{experts_path}.feed_forward.experts"), param),
                    stem.clone(),
                );
            } else {
                modules.insert(path.to_string(), stem.clone());
            }
        }
        Ok(Stems {
            all,
            modules,
            experts,
        })
    }
}

struct Stems {
    all: Vec<String>,
    /// Inference path (`layers.0.self_attn.q_proj`) → stem.
    modules: HashMap<String, String>,
    /// (`layers.1.feed_forward.experts`, parameter) → stem.
    experts: HashMap<(String, &'static str), String>,
}

fn to_model(e: Error) -> herd_model::Error {
    herd_model::Error::Kernel(e.to_string())
}

/// `layers.1.feed_forward.experts.2.gate_proj` → (`layers.1.feed_forward.experts`, 2, `gate_proj`).
fn expert_path(path: &str) -> Option<(&str, usize, &str)> {
    let (head, proj) = path.rsplit_once('.')?;
    let (stem, e) = head.rsplit_once('.')?;
    let e = e.parse().ok()?;
    stem.ends_with(".feed_forward.experts").then_some((stem, e, proj))
}

/// A PEFT stem's module path below the text model: strips `base_model.model.` and the text
/// model's own prefix in any of transformers' spellings.
fn text_path(stem: &str) -> Option<&str> {
    let rest = stem.strip_prefix("base_model.model.")?;
    ["model.language_model.", "language_model.model.", "model."]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
        .filter(|r| r.starts_with("layers."))
}

/// Expert `e`'s update for one of its projections, as nn.Linear's [out, in] factors, from PEFT's
/// fused factors for W [E, d1, d2]: A [r·E, d2], B [d1, r·E], ΔW[e] = s·B_e A_e (see
/// crate::lora). In nn.Linear's layout the update is s·A_eᵀ B_eᵀ: `LowRank` A = B_eᵀ [r, d1],
/// B = A_eᵀ [d2, r]; gate_proj/up_proj take the first/second half of gate_up's d2 = 2F.
fn expert_update(
    a: &Tensor,
    b: &Tensor,
    e: usize,
    proj: &str,
    dims: (usize, usize),
    rank: usize,
    scaling: f64,
) -> Result<LowRank> {
    let (ra, d2) = a.dims2()?;
    let (d1, rb) = b.dims2()?;
    let (out, want_in) = dims;
    let want_d2 = if proj == "down_proj" { out } else { 2 * out };
    if ra != rb || rank == 0 || ra % rank != 0 {
        return Err(Error::Adapter(format!(
            "fused expert factors of rank {rank}: lora_A has {ra} rows, lora_B {rb} columns"
        )));
    }
    let n_experts = ra / rank;
    if e >= n_experts || d1 != want_in || d2 != want_d2 {
        return Err(Error::Adapter(format!(
            "fused expert factors A [{ra}, {d2}], B [{d1}, {rb}] do not fit expert {e}'s {proj} [{out}, {want_in}]"
        )));
    }
    let a_e = a.narrow(0, e * rank, rank)?; // [r, d2]
    let b_e = b
        .reshape((d1, rank, n_experts))?
        .narrow(2, e, 1)?
        .reshape((d1, rank))?; // [d1, r]
    let a_e = match proj {
        "gate_proj" => a_e.narrow(1, 0, out)?,
        "up_proj" => a_e.narrow(1, out, out)?,
        _ => a_e,
    };
    Ok(LowRank::new(
        b_e.t()?.contiguous()?,
        a_e.t()?.contiguous()?,
        scaling,
    )?)
}

/// PEFT's LoraConfig fields herd understands; anything that changes the arithmetic and that
/// herd does not implement is refused by name.
fn settings_from_config(v: &Value) -> std::result::Result<LoraSettings, String> {
    let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(format!("peft_type `{peft_type}`: herd reads LoRA adapters only"));
    }
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    for k in ["use_dora", "fan_in_fan_out", "use_qalora"] {
        if flag(k) {
            return Err(format!("`{k}: true` is not supported"));
        }
    }
    if let Some(bias) = v.get("bias").and_then(Value::as_str).filter(|b| *b != "none") {
        return Err(format!("bias `{bias}` is not supported (only \"none\")"));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if v.get(k).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return Err(format!("`{k}` (per-module ranks or alphas) is not supported"));
        }
    }
    if v.get("modules_to_save")
        .and_then(Value::as_array)
        .is_some_and(|m| !m.is_empty())
    {
        return Err("`modules_to_save` (fully trained copies of modules) is not supported".into());
    }
    let rank = v
        .get("r")
        .and_then(Value::as_u64)
        .ok_or("`r` must be a positive integer")? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or("`lora_alpha` must be a number")?;
    let strings = |k: &str| -> std::result::Result<Vec<String>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or(format!("`{k}` must hold strings"))
                })
                .collect(),
            Some(_) => Err(format!("`{k}` must be a list of strings")),
        }
    };
    let settings = LoraSettings {
        rank,
        alpha,
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        use_rslora: flag("use_rslora"),
        target_modules: strings("target_modules")?,
        target_parameters: strings("target_parameters")?,
    };
    settings.validate().map_err(|e| e.to_string())?;
    Ok(settings)
}

/// adapter_config.json as PEFT writes it (the fields PEFT's LoraConfig reads).
fn config_json(s: &LoraSettings, base_model: Option<&str>, text_prefix: &str) -> Value {
    let mut modules: Vec<String> = Vec::new();
    for m in &s.target_modules {
        let expanded: Vec<String> = if m == "all-linear" {
            ALL_LINEAR.iter().map(|m| m.to_string()).collect()
        } else {
            vec![m.clone()]
        };
        for m in expanded {
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
    }
    // A router LoRA as PEFT can run it: a parameter target (the same keys).
    let mut parameters = s.target_parameters.clone();
    if modules.iter().any(|m| m == "router" || m.ends_with(".router")) {
        modules.retain(|m| m != "router" && !m.ends_with(".router"));
        if !parameters.iter().any(|p| p.ends_with("router.weight")) {
            parameters.push(ROUTER_PARAMETER.to_string());
        }
    }
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": s.alpha,
        "lora_dropout": s.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": s.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": target_modules_value(&modules, text_prefix),
        "target_parameters": if parameters.is_empty() { Value::Null } else { json!(parameters) },
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": s.use_rslora,
    })
}

/// `target_modules` as PEFT should read it: the names, or — in a multimodal model, where PEFT
/// would also wrap the vision tower's `q_proj`s and the like — one regex PEFT full-matches
/// against module paths, naming the same modules under the text layers only.
fn target_modules_value(modules: &[String], text_prefix: &str) -> Value {
    if text_prefix == "model." || modules.is_empty() {
        return json!(modules);
    }
    let names: Vec<String> = modules.iter().map(|m| regex_escape(m)).collect();
    Value::String(format!(
        "{}layers\\.\\d+\\.(.*\\.)?({})",
        regex_escape(text_prefix),
        names.join("|")
    ))
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = matches!(
                c,
                '.' | '\\' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
            );
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}
