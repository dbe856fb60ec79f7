using System.Text.Json.Nodes;
using NativeLora.Model;

namespace NativeLora.Training;

/// <summary>Config shapes of well-known models, for planning without their weights (values from their HF config.json).</summary>
public static class ModelPresets
{
    public static readonly IReadOnlyDictionary<string, string> Json = new Dictionary<string, string>
    {
        ["llama3-8b"] = """{"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000.0}""",
        ["llama3-70b"] = """{"model_type":"llama","vocab_size":128256,"hidden_size":8192,"intermediate_size":28672,"num_hidden_layers":80,"num_attention_heads":64,"num_key_value_heads":8,"max_position_embeddings":8192,"rope_theta":500000.0}""",
        ["mistral-7b"] = """{"model_type":"mistral","vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":32768,"rope_theta":10000.0,"sliding_window":4096}""",
    };

    /// <summary>A preset name, an HF model directory or a Hub id.</summary>
    public static ModelConfig Resolve(string nameOrDir) =>
        Json.TryGetValue(nameOrDir, out var json)
            ? ModelConfig.FromJson(JsonNode.Parse(json)!.AsObject(), nameOrDir)
            : Directory.Exists(nameOrDir) || Hub.HubId.TryParse(nameOrDir, out _)
                ? ModelDirectory.ReadConfig(nameOrDir)
                : throw new ArgumentException($"'{nameOrDir}' is neither a model directory nor a preset ({string.Join(", ", Json.Keys)})");
}
