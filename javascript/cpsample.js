// Hover help for the CPSample accordion (txt2img and img2img) and the CPSample tab.
// Elements are found by the end of their id: the accordion's ids carry a txt2img_/img2img_ prefix.
(function() {
    const tips = {
        "cpsample_enabled": "Steer this generation away from the guard's training images, where the guard is confident.",
        "cpsample_guard": "A guard from models/cpsample/, trained on the images this model was fine-tuned on (CPSample tab, or ComfyUI's Train Guard). It must be made for this model family.",
        "cpsample_use_calibration": "When the guard carries a calibration for its model, use its scale, alpha and window instead of the sliders (an X/Y/Z axis still wins).",
        "cpsample_scale": "Guidance strength. 0 changes nothing (the same image bit for bit). Each step's change is capped at the noise still present.",
        "cpsample_alpha": "Confidence band: only samples the guard labels with probability outside [alpha, 1 - alpha] (near its training images) are steered. 0.5 steers every sample.",
        "cpsample_start_percent": "Start of the sampling window (0 = the first, noisiest step).",
        "cpsample_end_percent": "End of the sampling window (1 = the last step).",
        "cpsample_objective": "uncertainty: push the guard's probability toward 1/2; opposite: push toward the label it does not predict.",
        "cpsample_guard_input": "denoised: the guard reads the model's x0 prediction (sees early where a sample is heading); noisy: the paper's form, the noisy latent.",
        "cpsample_train_folder": "Folder of the training images (the fine-tune set), on the machine running the webui.",
        "cpsample_train_class_folder": "Optional: other pictures of the same kind, none of them in the training set (e.g. DreamBooth class images). The guard learns to stay unsure on them, so it spoils fewer new samples.",
        "cpsample_train_name": "File name in models/cpsample/ (letters, digits, space, . _ -).",
        "cpsample_train_overwrite": "Replace a guard of that name; otherwise a number is added.",
        "cpsample_train_seed": "Seed for the random labels, the weights and the noise.",
        "cpsample_train_max_steps": "Upper bound on optimisation steps; training stops earlier once every image is memorised at every noise level that matters.",
        "cpsample_train_batch_size": "Noisy latents per optimisation step.",
        "cpsample_train_policy": "The folder is read with its sub-folders (kohya's '10_name' repeat folders: each image once; captions skipped). bucket: each image keeps its aspect, scaled to the nearest of a few sizes of about resolution² pixels (e.g. 832x1216 at 1024), one training batch per size; resize: scale the short side to the resolution and centre-crop a square; crop: centre-crop to the smallest common size; exact: all images must have one size.",
        "cpsample_train_resolution": "Training resolution in pixels: the bucket area's side for 'bucket' (0: the square root of the smallest image's area), the square's side for 'resize' (0: the smallest short side in the folder).",
        "cpsample_train_heads": "Independent random labellings the guard fits at once, at the same cost per sampling step. 3 (the default): the labellings' pushes differ except where they move a sample away from a training image; on the benchmarks three-head guards met the protection goal in 56 of 60 calibrations (one head: 49) and the copy goal uncalibrated in 30 of 48 (one head: 22), with somewhat worse samples where a fine-tune copies every time. 1: the paper's guard, one labelling. It trained in about as many steps either way.",
        "cpsample_train_interrupt": "Stop training; nothing is saved.",
        "cpsample_calibrate_guard": "The guard to calibrate (models/cpsample/), trained on this model's training images.",
        "cpsample_calibrate_folder": "The folder the guard was trained on: copies are counted against these images (loaded at the guard's size and resolution policy).",
        "cpsample_calibrate_prompt": "A prompt you generate with (a LoRA in it applies as in txt2img): copies are counted on it.",
        "cpsample_calibrate_negative": "The negative prompt you generate with.",
        "cpsample_calibrate_sampler": "The sampler you generate with (an ancestral or SDE one suits protection).",
        "cpsample_calibrate_scheduler": "The schedule type you generate with.",
        "cpsample_calibrate_steps": "Sampling steps, as in txt2img.",
        "cpsample_calibrate_cfg": "CFG scale, as in txt2img.",
        "cpsample_calibrate_width": "Probe width in pixels; 0 (with height 0) = the guard's training image size.",
        "cpsample_calibrate_height": "Probe height in pixels; 0 (with width 0) = the guard's training image size.",
        "cpsample_calibrate_seed": "First probe seed: probes are seed, seed+1, ... (each is the image txt2img makes with that seed), and the chosen setting is confirmed on as many seeds after them.",
        "cpsample_calibrate_probes": "Probe images per setting (at least 8). More probes measure smaller copy rates; a setting stops early once it cannot reach the target.",
        "cpsample_calibrate_save_as": "Empty: the calibration is written into the guard's own file. A name: a copy of the guard with the calibration, the original left as it is.",
        "cpsample_calibrate_interrupt": "Stop calibrating; nothing is saved.",
        "cpsample_check_images": "Generated images to check for copies of the training images.",
        "cpsample_check_folder": "The folder the guard was trained on.",
        "cpsample_check_k": "Neighbours 2..k+1 whose mean distance calibrates the l2 ratio.",
        "cpsample_check_ratio": "A calibrated l2 ratio below this flags a likely copy (1/3 as in Carlini et al. 2023).",
        "cpsample_check_ssim": "A best SSIM above this flags a likely copy.",
    };

    function addTitles() {
        for (const [suffix, text] of Object.entries(tips)) {
            gradioApp().querySelectorAll(`[id$="${suffix}"]`).forEach((el) => {
                if (!el.title) el.title = text;
            });
        }
    }

    onUiLoaded(addTitles);
})();
