// @ts-check
// The shapes the console reads from the /v1 API (the OpenAPI schemas of the same names), as JSDoc types for the
// type check (`make lint`). Only the fields the console uses; nothing here runs.

/** @typedef {"queued" | "running" | "succeeded" | "failed" | "cancelled"} JobStatus */

/** @typedef {{type: "saft" | "full", ratio?: number}} Method SaftMethod or FullMethod */

/** @typedef {{code: string, message: string, hint: string}} JobWarning */

/**
 * @typedef {object} CheckpointInfo
 * @property {string} sha256
 * @property {number} size_bytes
 * @property {string} url
 * @property {number | null} recommended_alpha
 * @property {string | null} alpha_rule
 */

/**
 * @typedef {object} Job JobPublic
 * @property {string} id
 * @property {JobStatus} status
 * @property {string | null} stage
 * @property {{stage: string | null, step: number, total_steps: number}} progress
 * @property {Record<string, number>} metrics
 * @property {{code: string, message: string} | null} error
 * @property {string} dataset_id
 * @property {string} model
 * @property {Method} method
 * @property {{epochs: number, batch_size: number, learning_rate: number}} hyperparameters
 * @property {boolean} cancel_requested
 * @property {CheckpointInfo | null} checkpoint
 * @property {JobWarning[]} [warnings]
 * @property {string} created_at
 * @property {string | null} started_at
 * @property {string | null} finished_at
 */

/** @typedef {Job & {checkpoint: CheckpointInfo}} SucceededJob a job with its checkpoint */

/**
 * @typedef {object} JobEvent JobEventPublic; `data` of a progress event: stage, step, total_steps, train_loss,
 * learning_rate; of a status event: status; of a stage event: stage.
 * @property {number} id
 * @property {string} created_at
 * @property {string} kind
 * @property {"info" | "warning" | "error"} level
 * @property {string} message
 * @property {Record<string, any>} data
 */

/**
 * @typedef {object} Dataset DatasetPublic
 * @property {string} id
 * @property {string} name
 * @property {number} num_images
 * @property {string[]} classes
 * @property {string[]} class_names
 * @property {Record<string, number>} counts
 * @property {number} size_bytes
 * @property {string} created_at
 */

/**
 * @typedef {object} Evaluation EvaluationPublic
 * @property {string} dataset
 * @property {string} dataset_name
 * @property {"zero-shot" | "interpolated" | "fine-tuned"} model
 * @property {number} alpha
 * @property {number} top1
 * @property {number} top5
 * @property {number} n
 */

/** @typedef {{data: Evaluation[], recommended_alpha: number | null, alpha_rule: string | null}} Evaluations */

/** @typedef {{name: string, numel: number, selected: number}} MaskTensor */

/**
 * @typedef {object} Mask MaskPublic
 * @property {number} ratio
 * @property {number} k
 * @property {number} num_eligible
 * @property {string | null} sha256
 * @property {number | null} size_bytes
 * @property {string | null} url
 * @property {MaskTensor[]} tensors
 */

/**
 * @typedef {object} Model ModelPublic
 * @property {string} name
 * @property {string[]} pretrained
 * @property {string[]} cached_pretrained
 * @property {string | null} default_pretrained
 * @property {boolean} available_offline
 */

/** @typedef {{default: string, data: Model[], weights_files: string[]}} Models */

/** @typedef {{label: string, score: number}} Prediction */

/**
 * A page of a list.
 * @template T
 * @typedef {{data: T[], next_cursor?: string | null}} Page
 */

export {};
