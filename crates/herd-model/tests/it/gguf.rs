//! GGUF: llama.cpp's converter output loads into the same model as the safetensors folder it came
//! from; `herd quantize` writes what in-situ quantization builds, bit for bit; broken and
//! unsupported files are errors that name the file, tensor and type.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use herd_model::quantize::{quantize_to_gguf, FileType};
use herd_model::weights::gguf::{GgufFile, Value};
use herd_model::weights::gguf_writer::{self, TensorSpec};
use herd_model::weights::{QuantType, Stored, WeightSource, Weights};
use herd_model::{Error, LoadOptions, TextModel};
use herd_testkit::{assert_close, fixture_path};

use crate::full_logits;

pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn load(path: &Path) -> TextModel {
    TextModel::load(path, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 497).collect()
}

#[test]
fn converter_bf16_gguf_computes_what_the_safetensors_folder_computes() {
    let dir = fixture_path("gguf-tiny");
    let a = load(&dir);
    let b = load(&dir.join("model-bf16.gguf"));
    // The GGUF's metadata resolves to the same layer plan and shapes (its eps is the f32 it
    // stores, its llama3 scaling comes as rope_freqs, its eos is the tokenizer's one id).
    let (ca, cb) = (a.config(), b.config());
    assert_eq!(ca.layers, cb.layers);
    assert_eq!(
        (
            ca.vocab_size,
            ca.hidden_size,
            ca.n_heads,
            ca.n_kv_heads,
            ca.head_dim,
            ca.max_position_embeddings
        ),
        (
            cb.vocab_size,
            cb.hidden_size,
            cb.n_heads,
            cb.n_kv_heads,
            cb.head_dim,
            cb.max_position_embeddings
        )
    );
    assert_eq!(cb.rms_norm_eps, 1e-5f32 as f64);
    let ids = prompt(40);
    let d = assert_close(
        &full_logits(&b, &ids),
        &full_logits(&a, &ids),
        1e-5,
        "bf16 GGUF vs safetensors",
    );
    println!("bf16 GGUF vs safetensors: max abs diff {d:.2e}");
    // Both keep the bf16 weights as stored; the converter writes the two MoE routers
    // ([4, 256]) in F32, 2 bytes more per value.
    assert_eq!(b.weight_bytes() - a.weight_bytes(), 2 * 4 * 256 * 2);
}

#[test]
fn a_wrong_name_map_breaks_gguf_parity() {
    // Mutation twin: swapping the roles of two GGUF tensors (gate ↔ up of the dense FFN) must
    // change the logits, so the parity test above can fail.
    let src = fixture_path("gguf-tiny").join("model-bf16.gguf");
    let g = GgufFile::open(&src).unwrap();
    let metadata: Vec<(String, Value)> = g.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let names: Vec<String> = g.tensors().keys().cloned().collect();
    let swapped = |n: &str| match n {
        "blk.0.ffn_gate.weight" => "blk.0.ffn_up.weight".to_string(),
        "blk.0.ffn_up.weight" => "blk.0.ffn_gate.weight".to_string(),
        other => other.to_string(),
    };
    let specs = specs_of(&g, &names, swapped);
    let out = tmp("swapped.gguf");
    gguf_writer::write(&out, &metadata, &specs, |i| Ok(raw_bytes(&g, &names[i]))).unwrap();
    let ids = prompt(20);
    let good = full_logits(&load(&src), &ids);
    let bad = full_logits(&load(&out), &ids);
    let diff = (good - bad)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-2, "swapping gate and up went unnoticed ({diff})");
}

/// Table entries for `names` of `g`, renamed by `rename` (to copy tensors into a new GGUF).
fn specs_of(g: &GgufFile, names: &[String], rename: impl Fn(&str) -> String) -> Vec<TensorSpec> {
    names
        .iter()
        .map(|n| {
            let t = g.tensor_info(n).unwrap();
            TensorSpec {
                name: rename(n),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                n_bytes: t.n_bytes,
            }
        })
        .collect()
}

/// A tensor's stored bytes, whatever its type.
fn raw_bytes(g: &GgufFile, name: &str) -> Vec<u8> {
    let t = g.tensor_info(name).unwrap();
    let mut buf = vec![0u8; t.n_bytes as usize];
    let path = &g.paths()[t.file];
    let f = std::fs::File::open(path).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, t.offset).unwrap();
    buf
}

#[test]
fn split_gguf_loads_from_its_first_part() {
    let src = fixture_path("gguf-tiny").join("model-bf16.gguf");
    let g = GgufFile::open(&src).unwrap();
    let metadata: Vec<(String, Value)> = g.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let names: Vec<String> = g.tensors().keys().cloned().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let dir = tmp("split");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, part) in [first, second].into_iter().enumerate() {
        let specs = specs_of(&g, part, |n| n.to_string());
        let mut meta = if i == 0 { metadata.clone() } else { Vec::new() };
        meta.push(("split.no".into(), Value::U16(i as u16)));
        meta.push(("split.count".into(), Value::U16(2)));
        let path = dir.join(format!("tiny-{:05}-of-00002.gguf", i + 1));
        gguf_writer::write(&path, &meta, &specs, |j| Ok(raw_bytes(&g, &part[j]))).unwrap();
    }
    let ids = prompt(12);
    let whole = full_logits(&load(&src), &ids);
    let split = full_logits(&load(&dir.join("tiny-00001-of-00002.gguf")), &ids);
    assert_close(&split, &whole, 0.0, "split GGUF");
    // A missing part is named.
    std::fs::remove_file(dir.join("tiny-00002-of-00002.gguf")).unwrap();
    let e = TextModel::load(&dir.join("tiny-00001-of-00002.gguf"), DType::F32, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("tiny-00002-of-00002.gguf"), "{e}");
}

/// Every quantized matrix of a GGUF written by `herd quantize` equals, byte for byte, what
/// `--quant` builds at load from the same folder; and the two load to the same logits.
#[test]
fn herd_quantize_writes_what_in_situ_quantization_builds() {
    let dir = fixture_path("gguf-tiny");
    for (ftype, base) in [
        (FileType::Quant(QuantType::Q8_0), QuantType::Q8_0),
        (FileType::Quant(QuantType::Q4K), QuantType::Q4K),
        (FileType::Quant(QuantType::Q6K), QuantType::Q6K),
    ] {
        let out = tmp(&format!("q-{base}.gguf"));
        let report = quantize_to_gguf(&dir, &out, ftype, |_, _, _| {}).unwrap();
        assert_eq!(report.file_bytes, std::fs::metadata(&out).unwrap().len());
        let (gguf, _) = WeightSource::open(&out).unwrap();
        let (folder, config) = WeightSource::open(&dir).unwrap();
        let plan = Some(herd_model::weights::QuantPlan {
            base,
            n_layers: config.layers.len(),
        });
        let in_situ = Weights::new(&folder, "", DType::F32, &Device::Cpu).with_quant(plan);
        let mut compared = 0;
        let WeightSource::Gguf(g) = &gguf else {
            unreachable!()
        };
        for name in g.tensors().keys() {
            let Some(hf) = herd_model::weights::gguf_llama4::hf_name(name) else {
                continue;
            };
            let info = g.tensor_info(name).unwrap();
            if info.dims.len() != 2 {
                continue;
            }
            let (out_dim, in_dim) = (info.dims[1], info.dims[0]);
            let hf = if hf == "lm_head.weight" {
                "lm_head.weight".to_string()
            } else {
                hf
            };
            let ours = in_situ.linear_absolute(&hf, in_dim, out_dim).unwrap();
            match (gguf.stored(&hf, &[out_dim, in_dim]).unwrap(), ours) {
                (Stored::Quantized(a), herd_model::nn::Linear::Quantized(b)) => {
                    assert_eq!(a.quant_type(), b.quant_type(), "{name}");
                    assert!(a.bytes() == b.bytes(), "{name}: bytes differ");
                    compared += 1;
                }
                (Stored::Dense(_), herd_model::nn::Linear::Dense(_)) => {}
                (a, b) => panic!("{name}: GGUF {a:?} vs in-situ {:?}", b.format()),
            }
        }
        assert!(compared >= 20, "{base}: only {compared} tensors compared");
        let ids = prompt(30);
        let from_file = full_logits(&load(&out), &ids);
        let options = LoadOptions {
            quant: Some(base),
            ..LoadOptions::new(DType::F32, &Device::Cpu)
        };
        let at_load = full_logits(&TextModel::load_with(&dir, &options).unwrap(), &ids);
        let d = assert_close(&from_file, &at_load, 1e-5, &format!("{base}: GGUF vs --quant"));
        println!("{base}: {compared} matrices bit-identical; logits max diff {d:.2e}");
    }
}

#[test]
fn q4_k_m_keeps_more_bits_where_llama_cpp_does() {
    let dir = fixture_path("gguf-tiny");
    let out = tmp("q4km.gguf");
    quantize_to_gguf(&dir, &out, FileType::Quant(QuantType::Q4K), |_, _, _| {}).unwrap();
    let g = GgufFile::open(&out).unwrap();
    let ty = |n: &str| herd_model::weights::gguf::ggml_type_name(g.tensor_info(n).unwrap().ggml_type);
    assert_eq!(ty("output.weight"), "Q6_K");
    assert_eq!(ty("token_embd.weight"), "Q4_K");
    assert_eq!(ty("blk.1.ffn_gate_inp.weight"), "F32", "the router stays F32");
    assert_eq!(ty("blk.0.attn_norm.weight"), "F32");
    // 4 layers: use_more_bits picks layer 2 ((2 − 4/8) % 3 == 2) and 3 (≥ 7·4/8); the first
    // eighth is empty.
    assert_eq!(ty("blk.0.attn_v.weight"), "Q4_K");
    assert_eq!(ty("blk.1.attn_v.weight"), "Q4_K");
    assert_eq!(ty("blk.2.attn_v.weight"), "Q6_K");
    assert_eq!(ty("blk.3.attn_v.weight"), "Q6_K");
    assert_eq!(ty("blk.0.ffn_down.weight"), "Q4_K");
    assert_eq!(ty("blk.2.ffn_down.weight"), "Q6_K");
    assert_eq!(ty("blk.3.ffn_down_exps.weight"), "Q6_K");
    assert_eq!(ty("blk.1.ffn_down_exps.weight"), "Q4_K");
    assert_eq!(ty("blk.1.attn_q.weight"), "Q4_K");
    assert_eq!(g.get("general.file_type"), Some(&Value::U32(15)));
}

#[test]
fn quantize_refuses_configs_a_gguf_cannot_express() {
    // scout-tiny chunks attention by 8; llama.cpp would run a llama4 GGUF with 8192.
    let e = quantize_to_gguf(
        &fixture_path("scout-tiny"),
        &tmp("scout.gguf"),
        FileType::Bf16,
        |_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("attention_chunk_size"), "{e}");
    assert!(!tmp("scout.gguf").exists());
}

/// Writes a one-tensor GGUF with `metadata` and a tensor of `ggml_type`.
fn tiny_gguf(name: &str, metadata: Vec<(String, Value)>, ggml_type: u32, n_bytes: u64) -> PathBuf {
    let path = tmp(name);
    let spec = TensorSpec {
        name: "token_embd.weight".into(),
        dims: vec![256, 512],
        ggml_type,
        n_bytes,
    };
    gguf_writer::write(&path, &metadata, &[spec], |_| Ok(vec![0u8; n_bytes as usize])).unwrap();
    path
}

fn llama4_meta() -> Vec<(String, Value)> {
    let src = GgufFile::open(&fixture_path("gguf-tiny").join("model-q8_0.gguf")).unwrap();
    src.metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn unsupported_and_broken_gguf_files_are_named_errors() {
    let err = |path: &Path| match TextModel::load(path, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    };
    // IQ2_XXS (type 16): named with the tensor and what is supported.
    let iq2 = tiny_gguf("iq2.gguf", llama4_meta(), 16, 512 * 66);
    let msg = err(&iq2);
    assert!(
        msg.contains("token_embd.weight") && msg.contains("IQ2_XXS") && msg.contains("Q4_K"),
        "{msg}"
    );
    // Another architecture.
    let mut meta = llama4_meta();
    for (k, v) in meta.iter_mut() {
        if k == "general.architecture" {
            *v = Value::String("qwen2".into());
        }
    }
    let other = tiny_gguf("qwen.gguf", meta, 0, 512 * 256 * 4);
    let msg = err(&other);
    assert!(msg.contains("qwen2") && msg.contains("llama4"), "{msg}");
    // A truncated tensor.
    let good = fixture_path("gguf-tiny").join("model-q8_0.gguf");
    let cut = tmp("cut.gguf");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = err(&cut);
    assert!(
        msg.contains("truncated") && msg.contains("output_norm.weight"),
        "{msg}"
    );
    // Unknown version, bad magic, a header cut short.
    let mut v1 = bytes.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(tmp("v1.gguf"), &v1).unwrap();
    assert!(err(&tmp("v1.gguf")).contains("version 1"));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    std::fs::write(tmp("magic.gguf"), &magic).unwrap();
    assert!(err(&tmp("magic.gguf")).contains("not a GGUF"));
    std::fs::write(tmp("short.gguf"), &bytes[..300]).unwrap();
    assert!(err(&tmp("short.gguf")).contains("file ends inside"));
    // A huge string length is refused before allocating.
    let mut huge = bytes[..24].to_vec();
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(tmp("huge.gguf"), &huge).unwrap();
    assert!(err(&tmp("huge.gguf")).contains("implausible"));
    // Missing tensor: a GGUF without blk.0.attn_q.
    let src = GgufFile::open(&good).unwrap();
    let names: Vec<String> = src
        .tensors()
        .keys()
        .filter(|n| *n != "blk.0.attn_q.weight")
        .cloned()
        .collect();
    let specs = specs_of(&src, &names, |n| n.to_string());
    let meta: Vec<(String, Value)> = src
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    gguf_writer::write(&tmp("missing.gguf"), &meta, &specs, |i| {
        Ok(raw_bytes(&src, &names[i]))
    })
    .unwrap();
    let e = TextModel::load(&tmp("missing.gguf"), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(e, Error::MissingTensor { .. }) && e.to_string().contains("blk.0.attn_q.weight"),
        "{e}"
    );
    // A tensor of an unknown type whose dims overflow: refused at open, as any type's are
    // (it was skipped, and rope_freqs is read before its shape is checked: a debug build's
    // multiply panicked).
    let spec = TensorSpec {
        name: "rope_freqs.weight".into(),
        dims: vec![1 << 32; 4],
        ggml_type: 99,
        n_bytes: 0,
    };
    let path = tmp("overflow.gguf");
    gguf_writer::write(&path, &llama4_meta(), &[spec], |_| Ok(Vec::new())).unwrap();
    let msg = err(&path);
    assert!(
        msg.contains("rope_freqs.weight") && msg.contains("overflow"),
        "{msg}"
    );
    // Arrays of one-byte items, each under the per-array bound, past the bound on all of them
    // together (each item is a 32-byte value in memory): refused before the second is read.
    let mut bools = b"GGUF".to_vec();
    bools.extend(3u32.to_le_bytes()); // version
    bools.extend(0u64.to_le_bytes()); // tensors
    bools.extend(2u64.to_le_bytes()); // metadata entries
    for (key, len) in [("a", 1u64 << 22), ("b", (1 << 22) + 1)] {
        bools.extend((key.len() as u64).to_le_bytes());
        bools.extend(key.as_bytes());
        bools.extend(9u32.to_le_bytes()); // an array
        bools.extend(7u32.to_le_bytes()); // of bools
        bools.extend(len.to_le_bytes());
        if key == "a" {
            bools.resize(bools.len() + len as usize, 0);
        }
    }
    std::fs::write(tmp("bools.gguf"), &bools).unwrap();
    let msg = match GgufFile::open(&tmp("bools.gguf")) {
        Ok(_) => panic!("bools.gguf opened"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("more than 8388608 items together"), "{msg}");
    let _ = Tensor::zeros(1, DType::F32, &Device::Cpu);
}

/// `inspect`'s resident-bytes figure is exactly what a load holds, for every source and option.
#[test]
fn resident_bytes_estimate_equals_what_a_load_holds() {
    let dir = fixture_path("gguf-tiny");
    let cases: Vec<(PathBuf, Option<QuantType>, DType)> = vec![
        (dir.clone(), None, DType::F32),
        (dir.clone(), Some(QuantType::Q4K), DType::F32),
        (dir.clone(), Some(QuantType::Q8_0), DType::F32),
        (dir.clone(), None, DType::BF16),
        (dir.join("model-bf16.gguf"), None, DType::F32),
        (dir.join("model-q8_0.gguf"), None, DType::F32),
        (fixture_path("scout-tiny"), None, DType::F32),
        (fixture_path("sharded-bf16"), Some(QuantType::Q8_0), DType::F32),
    ];
    for (path, quant, dtype) in cases {
        let options = LoadOptions {
            quant,
            ..LoadOptions::new(dtype, &Device::Cpu)
        };
        let (source, config) = WeightSource::open(&path).unwrap();
        let expected = herd_model::inspect::resident_weight_bytes(&source, &config, &options).unwrap();
        let model = TextModel::from_source(&source, config, &options).unwrap();
        assert_eq!(
            model.weight_bytes() as u64,
            expected,
            "{} {quant:?} {dtype:?}",
            path.display()
        );
    }
}

#[test]
fn quantize_refuses_to_overwrite_its_own_input() {
    let dir = tmp("own-input");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture_path("gguf-tiny")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "json" || e == "safetensors")
        {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let target = dir.join("model.safetensors");
    let before = std::fs::read(&target).unwrap();
    let e = quantize_to_gguf(&dir, &target, FileType::Quant(QuantType::Q8_0), |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert!(
        std::fs::read(&target).unwrap() == before,
        "the input is untouched"
    );
}
