#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
typedef void (*qfn)(const float*, void*, int64_t);
typedef void (*dfn)(const void*, float*, int64_t);
void quantize_row_q4_0_ref(const float*, void*, int64_t); void quantize_row_q5_0_ref(const float*, void*, int64_t);
void quantize_row_q5_1_ref(const float*, void*, int64_t); void quantize_row_q8_0_ref(const float*, void*, int64_t);
void quantize_row_q4_K_ref(const float*, void*, int64_t); void quantize_row_q5_K_ref(const float*, void*, int64_t);
void quantize_row_q6_K_ref(const float*, void*, int64_t);
void dequantize_row_q4_0(const void*, float*, int64_t); void dequantize_row_q5_0(const void*, float*, int64_t);
void dequantize_row_q5_1(const void*, float*, int64_t); void dequantize_row_q8_0(const void*, float*, int64_t);
void dequantize_row_q4_K(const void*, float*, int64_t); void dequantize_row_q5_K(const void*, float*, int64_t);
void dequantize_row_q6_K(const void*, float*, int64_t);
void ggml_fp32_to_fp16_row(const float*, uint16_t*, int64_t); void ggml_fp32_to_bf16_row_ref(const float*, uint16_t*, int64_t);
size_t ggml_type_size(int); int64_t ggml_blck_size(int);
int main(int argc, char** argv){
  int t = atoi(argv[2]); FILE* f = fopen(argv[3],"rb"); fseek(f,0,SEEK_END); long n = ftell(f); fseek(f,0,SEEK_SET);
  char* in = malloc(n); fread(in,1,n,f); fclose(f);
  FILE* o = fopen(argv[4],"wb");
  if (!strcmp(argv[1],"q")) {
    int64_t k = n/4; size_t out = k/ggml_blck_size(t)*ggml_type_size(t); void* y = malloc(out);
    switch(t){case 2: quantize_row_q4_0_ref((float*)in,y,k);break; case 6: quantize_row_q5_0_ref((float*)in,y,k);break;
      case 7: quantize_row_q5_1_ref((float*)in,y,k);break; case 8: quantize_row_q8_0_ref((float*)in,y,k);break;
      case 12: quantize_row_q4_K_ref((float*)in,y,k);break; case 13: quantize_row_q5_K_ref((float*)in,y,k);break;
      case 14: quantize_row_q6_K_ref((float*)in,y,k);break; case 1: ggml_fp32_to_fp16_row((float*)in,y,k);break;
      case 30: ggml_fp32_to_bf16_row_ref((float*)in,y,k);break; default: return 2;}
    fwrite(y,1,out,o);
  } else {
    int64_t k = n/ggml_type_size(t)*ggml_blck_size(t); float* y = malloc(k*4);
    switch(t){case 2: dequantize_row_q4_0(in,y,k);break; case 6: dequantize_row_q5_0(in,y,k);break; case 7: dequantize_row_q5_1(in,y,k);break;
      case 8: dequantize_row_q8_0(in,y,k);break; case 12: dequantize_row_q4_K(in,y,k);break; case 13: dequantize_row_q5_K(in,y,k);break;
      case 14: dequantize_row_q6_K(in,y,k);break; default: return 2;}
    fwrite(y,4,k,o);
  }
  fclose(o); return 0; }
