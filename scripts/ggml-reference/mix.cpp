#include <cstdio>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>
extern "C" {
struct ggml_context; struct ggml_tensor;
struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; };
ggml_context * ggml_init(ggml_init_params);
ggml_tensor * ggml_new_tensor(ggml_context*, int type, int n_dims, const int64_t * ne);
ggml_tensor * ggml_set_name(ggml_tensor*, const char*);
struct llama_model; void llama_backend_init(void);
struct params_blob { char bytes[512]; };
}
struct llama_quant_model_desc { const char * architecture; uint32_t n_embd, n_ff, n_layer, n_head, n_head_kv, n_expert, n_embd_head_k, n_embd_head_v; };
struct quantize_state_impl;
llama_model * llama_quant_model_from_metadata(const llama_quant_model_desc * desc);
quantize_state_impl * llama_quant_init(const llama_model * model, const struct llama_model_quantize_params * params);
enum llama_ftype : int {}; enum ggml_type : int {};
void llama_quant_compute_types(quantize_state_impl * qs, llama_ftype ftype, ggml_tensor ** tensors, ggml_type * result_types, size_t n);
bool llama_quant_tensor_allows_quantization(const quantize_state_impl * qs, const ggml_tensor * tensor);
extern "C" params_blob llama_model_quantize_default_params(void);
// usage: mix ftype n_layer n_embd n_ff n_head n_head_kv vocab tied
int main(int argc, char ** argv) {
  int ftype = atoi(argv[1]); uint32_t L = atoi(argv[2]), E = atoi(argv[3]), F = atoi(argv[4]), H = atoi(argv[5]), HKV = atoi(argv[6]), V = atoi(argv[7]); bool tied = atoi(argv[8]);
  llama_backend_init();
  llama_quant_model_desc d = { "llama", E, F, L, H, HKV, 0, E / H, E / H };
  llama_model * m = llama_quant_model_from_metadata(&d);
  params_blob p = llama_model_quantize_default_params();
  quantize_state_impl * qs = llama_quant_init(m, (const llama_model_quantize_params*)&p);
  ggml_init_params ip = { 64u << 20, nullptr, true };
  ggml_context * ctx = ggml_init(ip);
  std::vector<ggml_tensor*> all; std::vector<std::string> names;
  auto add = [&](std::string name, std::vector<int64_t> ne) { auto * t = ggml_new_tensor(ctx, 0, (int)ne.size(), ne.data()); ggml_set_name(t, name.c_str()); all.push_back(t); names.push_back(name); };
  // order as llama.cpp's weight_name_comparer sorts: non-block tensors (layer -1) by name, then block by block by name
  add("output.weight", {E, V}); if (tied) { all.pop_back(); names.pop_back(); }
  add("output_norm.weight", {E}); add("token_embd.weight", {E, V});
  for (uint32_t i = 0; i < L; i++) {
    std::string b = "blk." + std::to_string(i) + ".";
    add(b + "attn_k.weight", {E, (int64_t)HKV * (E / H)}); add(b + "attn_norm.weight", {E}); add(b + "attn_output.weight", {E, E});
    add(b + "attn_q.weight", {E, E}); add(b + "attn_v.weight", {E, (int64_t)HKV * (E / H)});
    add(b + "ffn_down.weight", {F, E}); add(b + "ffn_gate.weight", {E, F}); add(b + "ffn_norm.weight", {E}); add(b + "ffn_up.weight", {E, F});
  }
  std::vector<ggml_tensor*> q; std::vector<std::string> qn;
  for (size_t i = 0; i < all.size(); i++) if (llama_quant_tensor_allows_quantization(qs, all[i])) { q.push_back(all[i]); qn.push_back(names[i]); } else printf("%s -1\n", names[i].c_str());
  std::vector<ggml_type> types(q.size());
  llama_quant_compute_types(qs, (llama_ftype)ftype, q.data(), types.data(), q.size());
  for (size_t i = 0; i < q.size(); i++) printf("%s %d\n", qn[i].c_str(), (int)types[i]);
}
