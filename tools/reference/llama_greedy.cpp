// llama_greedy: feed token ids to llama.cpp, write the logits of every prompt position and of
// N greedy steps, print the greedy ids. Used by check_herd_gguf.py to compare llama.cpp with the
// transformers references of fixtures/gguf-tiny and with herd, on the same GGUF file.
//
//   llama_greedy MODEL.gguf ID,ID,... N_PREDICT OUT.f32
//
// OUT.f32: little-endian f32, (n_prompt + N_PREDICT) rows of n_vocab: rows 0..n_prompt-1 are the
// prompt logits (one llama_process call, every position an output), row n_prompt - 1 + s (s >= 1)
// the logits after feeding greedy token s-1 (so the argmax of row n_prompt - 1 + s is greedy[s]).
// stdout: "greedy ID,ID,..." (N_PREDICT ids, no eos stop).
//
// Weights are loaded without extra CPU buffer types (use_extra_bufts = false, as `-nr`): with
// GGML_NATIVE on an AMX_INT8 CPU, this llama.cpp segfaults in ggml_backend_amx_mul_mat on every
// quantized file (README, gguf-tiny). Built against the static libraries of /work/llama-build:
//
//   L=/work/llama-cpp-python/llama_cpp_python-0.3.36/vendor/llama.cpp B=/work/llama-build/build
//   g++ -O2 -std=c++17 -I$L/include -I$L/ggml/include tools/reference/llama_greedy.cpp -o /work/llama-build/llama_greedy \
//       $B/src/libllama.a $B/ggml/src/libggml.a $B/ggml/src/libggml-cpu.a $B/ggml/src/libggml-base.a -fopenmp -lpthread -ldl

#include "llama.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf ID,ID,... N_PREDICT OUT.f32\n", argv[0]);
        return 2;
    }
    const std::string model_path = argv[1];
    std::vector<llama_token> prompt;
    {
        std::stringstream ss(argv[2]);
        std::string item;
        while (std::getline(ss, item, ',')) {
            prompt.push_back((llama_token) std::stol(item));
        }
    }
    const int n_predict = std::atoi(argv[3]);
    const int n_prompt = (int) prompt.size();
    if (n_prompt == 0 || n_predict < 1) {
        fprintf(stderr, "empty prompt or N_PREDICT < 1\n");
        return 2;
    }

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (model == nullptr) {
        fprintf(stderr, "error: unable to load model %s\n", model_path.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_predict;
    cp.n_batch = n_prompt;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        fprintf(stderr, "error: failed to create the llama_context\n");
        return 1;
    }

    FILE * out = fopen(argv[4], "wb");
    if (out == nullptr) {
        fprintf(stderr, "error: cannot write %s\n", argv[4]);
        return 1;
    }
    llama_batch_ext * batch = llama_batch_ext_init(ctx);
    llama_batch_ext_clear(batch);
    for (int i = 0; i < n_prompt; ++i) {
        const int32_t idx = llama_batch_ext_add_token(batch, 0, prompt[i]);
        if (idx < 0) {
            fprintf(stderr, "error: llama_batch_ext_add_token returned %d at %d\n", idx, i);
            return 1;
        }
        const llama_pos pos = i;
        llama_batch_ext_set_pos(batch, idx, &pos);
        llama_batch_ext_set_output_logits(batch, idx, true);
    }
    if (int rc = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) {
        fprintf(stderr, "error: llama_process (prompt) returned %d\n", rc);
        return 1;
    }
    std::vector<llama_token> greedy;
    const float * last = nullptr;
    for (int i = 0; i < n_prompt; ++i) {
        last = llama_get_logits_ith(ctx, i);
        fwrite(last, sizeof(float), n_vocab, out);
    }
    for (int s = 0; s < n_predict; ++s) {
        int best = 0;
        for (int v = 1; v < n_vocab; ++v) {
            if (last[v] > last[best]) best = v;
        }
        greedy.push_back(best);
        if (s + 1 == n_predict) break;
        llama_batch_ext_clear(batch);
        const int32_t idx = llama_batch_ext_add_token(batch, 0, best);
        const llama_pos pos = n_prompt + s;
        llama_batch_ext_set_pos(batch, idx, &pos);
        llama_batch_ext_set_output_logits(batch, idx, true);
        if (int rc = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) {
            fprintf(stderr, "error: llama_process (step %d) returned %d\n", s, rc);
            return 1;
        }
        last = llama_get_logits_ith(ctx, 0);
        fwrite(last, sizeof(float), n_vocab, out);
    }
    fclose(out);
    printf("greedy");
    for (size_t i = 0; i < greedy.size(); ++i) printf("%c%d", i ? ',' : ' ', greedy[i]);
    printf("\n");
    llama_batch_ext_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
