#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <stdlib.h>
struct ggml_context; struct ggml_tensor; struct gguf_context;
struct gguf_init_params { bool no_alloc; struct ggml_context ** ctx; };
struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; };
struct gguf_context * gguf_init_from_file(const char*, struct gguf_init_params);
struct gguf_context * gguf_init_empty(void);
int64_t gguf_get_n_kv(const struct gguf_context*); const char * gguf_get_key(const struct gguf_context*, int64_t);
int gguf_get_kv_type(const struct gguf_context*, int64_t); int gguf_get_arr_type(const struct gguf_context*, int64_t);
size_t gguf_get_arr_n(const struct gguf_context*, int64_t); const void * gguf_get_arr_data(const struct gguf_context*, int64_t);
const char * gguf_get_arr_str(const struct gguf_context*, int64_t, size_t); const char * gguf_get_val_str(const struct gguf_context*, int64_t);
const void * gguf_get_val_data(const struct gguf_context*, int64_t);
int64_t gguf_get_n_tensors(const struct gguf_context*); const char * gguf_get_tensor_name(const struct gguf_context*, int64_t);
int gguf_get_tensor_type(const struct gguf_context*, int64_t); size_t gguf_get_tensor_offset(const struct gguf_context*, int64_t);
size_t gguf_get_data_offset(const struct gguf_context*); size_t gguf_get_alignment(const struct gguf_context*); uint32_t gguf_get_version(const struct gguf_context*);
struct ggml_tensor * ggml_get_tensor(struct ggml_context*, const char*); void * ggml_get_data(const struct ggml_tensor*); size_t ggml_nbytes(const struct ggml_tensor*);
int64_t * ne_of(struct ggml_tensor*);
struct ggml_context * ggml_init(struct ggml_init_params); struct ggml_tensor * ggml_new_tensor(struct ggml_context*, int, int, const int64_t*);
struct ggml_tensor * ggml_set_name(struct ggml_tensor*, const char*);
void gguf_set_val_u8(struct gguf_context*, const char*, uint8_t); void gguf_set_val_i8(struct gguf_context*, const char*, int8_t);
void gguf_set_val_u16(struct gguf_context*, const char*, uint16_t); void gguf_set_val_i16(struct gguf_context*, const char*, int16_t);
void gguf_set_val_u32(struct gguf_context*, const char*, uint32_t); void gguf_set_val_i32(struct gguf_context*, const char*, int32_t);
void gguf_set_val_f32(struct gguf_context*, const char*, float); void gguf_set_val_u64(struct gguf_context*, const char*, uint64_t);
void gguf_set_val_i64(struct gguf_context*, const char*, int64_t); void gguf_set_val_f64(struct gguf_context*, const char*, double);
void gguf_set_val_bool(struct gguf_context*, const char*, bool); void gguf_set_val_str(struct gguf_context*, const char*, const char*);
void gguf_set_arr_data(struct gguf_context*, const char*, int, const void*, size_t); void gguf_set_arr_str(struct gguf_context*, const char*, const char**, size_t);
void gguf_add_tensor(struct gguf_context*, const struct ggml_tensor*); bool gguf_write_to_file(const struct gguf_context*, const char*, bool);
static uint64_t fnv(const unsigned char* p, size_t n){ uint64_t h=1469598103934665603ULL; for(size_t i=0;i<n;i++){h^=p[i]; h*=1099511628211ULL;} return h; }
int main(int argc, char** argv){
  if (!strcmp(argv[1], "read")) {
    struct ggml_context * ctx = NULL; struct gguf_init_params p = { false, &ctx };
    struct gguf_context * g = gguf_init_from_file(argv[2], p);
    if (!g) { printf("REJECTED\n"); return 0; }
    printf("version %u alignment %zu data_offset %zu\n", gguf_get_version(g), gguf_get_alignment(g), gguf_get_data_offset(g));
    for (int64_t i = 0; i < gguf_get_n_kv(g); i++) {
      int t = gguf_get_kv_type(g, i); printf("kv %s type %d", gguf_get_key(g, i), t);
      if (t == 9) { int at = gguf_get_arr_type(g, i); size_t n = gguf_get_arr_n(g, i); printf(" arr %d n %zu", at, n);
        if (at == 8) { for (size_t j = 0; j < n; j++) printf(" [%s]", gguf_get_arr_str(g, i, j)); }
        else { size_t sz = (at==0||at==1||at==7)?1:(at==2||at==3)?2:(at==4||at==5||at==6)?4:8; printf(" h %016llx", (unsigned long long)fnv(gguf_get_arr_data(g,i), n*sz)); } }
      else if (t == 8) printf(" [%s]", gguf_get_val_str(g, i));
      else { size_t sz = (t==0||t==1||t==7)?1:(t==2||t==3)?2:(t==4||t==5||t==6)?4:8; printf(" h %016llx", (unsigned long long)fnv(gguf_get_val_data(g,i), sz)); }
      printf("\n"); }
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) { const char* n = gguf_get_tensor_name(g, i); struct ggml_tensor* t = ggml_get_tensor(ctx, n);
      printf("tensor %s type %d offset %zu bytes %zu h %016llx\n", n, gguf_get_tensor_type(g, i), gguf_get_tensor_offset(g, i), ggml_nbytes(t), (unsigned long long)fnv(ggml_get_data(t), ggml_nbytes(t))); }
    return 0;
  }
  // write: a file with every value type and a few tensors
  struct gguf_context * g = gguf_init_empty();
  gguf_set_val_u8(g, "t.u8", 200); gguf_set_val_i8(g, "t.i8", -5); gguf_set_val_u16(g, "t.u16", 60000); gguf_set_val_i16(g, "t.i16", -30000);
  gguf_set_val_u32(g, "t.u32", 4000000000u); gguf_set_val_i32(g, "t.i32", -2000000000); gguf_set_val_f32(g, "t.f32", 1.5f);
  gguf_set_val_u64(g, "t.u64", 18000000000000000000ULL); gguf_set_val_i64(g, "t.i64", -9000000000000000000LL); gguf_set_val_f64(g, "t.f64", -2.25);
  gguf_set_val_bool(g, "t.bool", true); gguf_set_val_str(g, "t.str", "héllo");
  int32_t ai[3] = {1, -2, 3}; gguf_set_arr_data(g, "t.arr_i32", 5, ai, 3);
  float af[2] = {0.5f, -1.0f}; gguf_set_arr_data(g, "t.arr_f32", 6, af, 2);
  const char * as[3] = {"a", "", "ü"}; gguf_set_arr_str(g, "t.arr_str", as, 3);
  struct ggml_init_params ip = { 1 << 20, NULL, false }; struct ggml_context * ctx = ggml_init(ip);
  int64_t ne1[2] = {64, 3}; struct ggml_tensor * t1 = ggml_new_tensor(ctx, 8, 2, ne1); ggml_set_name(t1, "blk.0.attn_q.weight");
  unsigned char * d1 = ggml_get_data(t1); for (size_t i = 0; i < ggml_nbytes(t1); i++) d1[i] = (unsigned char)(i * 7);
  int64_t ne2[1] = {5}; struct ggml_tensor * t2 = ggml_new_tensor(ctx, 0, 1, ne2); ggml_set_name(t2, "output_norm.weight");
  float * d2 = ggml_get_data(t2); for (int i = 0; i < 5; i++) d2[i] = i * 0.25f;
  gguf_add_tensor(g, t1); gguf_add_tensor(g, t2);
  return gguf_write_to_file(g, argv[2], false) ? 0 : 1;
}
