/** The actor module loader: validation against the ABI, fuel metering, memory capping. */
export { capMemory, prepareModule, type PreparedModule } from './prepare.js';
